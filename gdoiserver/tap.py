"""``twistd gdoi`` (and ``twist gdoi``): command-line options and the service they make."""

import os
import sys

from twisted.logger import Logger
from twisted.python import usage

from gdoiserver.config import ConfigError, load_config, policy_from_config
from gdoiserver.doi.ipsec.plugin import from_config as ipsec_plugin
from gdoiserver.exchanges.factory import Phase1Factory
from gdoiserver.service import GDOIService, gdoi_plugin

DEFAULT_CONFIG = os.path.join("etc", "gdoiserver.toml")
log = Logger()


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = "Run the gdoiserver ISAKMP key server (GDOI and the IPsec DOI) with the settings of a TOML file."
    optParameters = [
        ["config", "c", DEFAULT_CONFIG, "The TOML configuration file (relative paths start at the working directory)."],
    ]


def makeService(options: Options) -> GDOIService:
    """The key server configured from ``--config``.

    A configuration error ends the process here, before twistd daemonizes or redirects stderr, with one line on
    stderr and exit status EX_CONFIG (78): the error names the file, the key and the problem, and a traceback would
    add nothing.
    """
    try:
        config = load_config(options["config"])
        policy = policy_from_config(config, options["config"])
        plugins = [ipsec_plugin(config, options["config"])]
    except ConfigError as e:
        print(f"gdoi: configuration error: {e}", file=sys.stderr)
        raise SystemExit(os.EX_CONFIG) from None
    if config.groups:
        plugins.append(gdoi_plugin(config, policy))
    from twisted.internet import reactor

    log.info("configuration read from {path}", path=options["config"])
    service = GDOIService(config, reactor, factory=Phase1Factory(policy), plugins=plugins)
    service.exit_on_listen_error = True
    return service
