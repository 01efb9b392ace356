"""Sans-IO exchange state machines: a message, the time and randomness in; effects out.  No Twisted here."""
