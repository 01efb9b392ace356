"""The group member (GM): enrolls a host in GDOI groups (RFC 6407 section 3) and hands the keys to an SA sink.

- :mod:`.config`: the member's own TOML file (key servers in fallback order, groups, identity, PSK or certificates,
  sink, listen addresses) and the Phase 1 and GROUPKEY-PULL policies it gives.
- :mod:`.sink`: where registrations go: JSON lines (keys only with a debug option); :mod:`.xfrm`: the Linux kernel.
- :mod:`.schedule`: when to register again (sans-IO arithmetic).
- :mod:`.service`: :class:`~gdoiserver.member.service.GroupMember`, the Twisted service that runs Phase 1 and
  GROUPKEY-PULL through the IKE engine; :mod:`.tap` is the ``gdoi-member`` twistd plugin.
"""
