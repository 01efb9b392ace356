"""GDOI payloads (RFC 6407 section 5); filled in by the GDOI codec work."""
