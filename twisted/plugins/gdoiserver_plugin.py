"""twistd plugin ``gdoi``: the gdoiserver key server.  This directory must have no ``__init__.py``."""

from twisted.application.service import ServiceMaker

gdoi = ServiceMaker(
    "gdoiserver",
    "gdoiserver.tap",
    "A multi-DOI ISAKMP key server: GDOI (RFC 6407) group controller/key server and the IPsec DOI",
    "gdoi",
)
