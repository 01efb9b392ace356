"""Key server rekeying (RFC 6407 section 4): the schedule (:mod:`.schedule`), the GROUPKEY-PUSH messages
(:mod:`.messages`), the member table (:mod:`.members`), delivery by multicast and unicast (:mod:`.delivery`) and
the service that runs them on a clock with a key store (:mod:`.service`, the only part that imports Twisted).
"""
