"""twistd plugins ``gdoi`` (the gdoiserver key server) and ``gdoi-member`` (the group member).  This directory
must have no ``__init__.py``."""

from twisted.application.service import ServiceMaker

gdoi = ServiceMaker(
    "gdoiserver",
    "gdoiserver.tap",
    "A multi-DOI ISAKMP key server: GDOI (RFC 6407) group controller/key server and the IPsec DOI",
    "gdoi",
)

gdoi_member = ServiceMaker(
    "gdoiserver group member",
    "gdoiserver.member.tap",
    "A GDOI (RFC 6407) group member: enrolls this host in groups and hands their keys to an SA sink",
    "gdoi-member",
)
