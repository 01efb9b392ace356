"""``twistd gdoi`` (and ``twist gdoi``): command-line options and the service they make."""

import os
import sys

from twisted.logger import Logger
from twisted.python import usage

from gdoiserver.config import ConfigError, load_config, policy_from_config
from gdoiserver.doi.ipsec.plugin import from_config as ipsec_plugin
from gdoiserver.doi.ipsec.sa_sink import SinkError
from gdoiserver.service import gdoi_plugin

DEFAULT_CONFIG = os.path.join("etc", "gdoiserver.toml")
log = Logger()


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = "Run the gdoiserver ISAKMP key server (GDOI and the IPsec DOI) with the settings of a TOML file."
    optParameters = [
        ["config", "c", DEFAULT_CONFIG, "The TOML configuration file (relative paths start at the working directory)."],
    ]


def load(path: str):
    """The configuration, its Phase 1 policy and its DOI plugins' checks, as start-up and ``gdoictl check-config``
    run them; raises ConfigError."""
    config = load_config(path)
    policy = policy_from_config(config, path)
    try:
        ipsec_plugin(config, path)
    except SinkError as e:  # [ipsec] xfrm = true where the kernel cannot take SAs
        raise ConfigError(path, "ipsec.xfrm", str(e)) from None
    if config.groups:
        gdoi_plugin(config, policy)
    return config, policy


def makeService(options: Options):
    """The key server configured from ``--config``.

    A configuration error ends the process here, before twistd daemonizes or redirects stderr, with one line on
    stderr and exit status EX_CONFIG (78): the error names the file, the key and the problem, and a traceback would
    add nothing.  A key store that cannot be opened (permissions, a foreign or corrupt file, another process using
    it) ends it with EX_CANTCREAT (73).  The service logs in ``server.log_format`` (text or JSON lines) to
    twistd's log file.
    """
    from gdoiserver.keyserver import KeyServer
    from gdoiserver.logs import ObservedService, twistd_observer
    from gdoiserver.store.base import StoreError

    path = options["config"]
    try:
        config, policy = load(path)
    except ConfigError as e:
        print(f"gdoi: configuration error: {e}", file=sys.stderr)
        raise SystemExit(os.EX_CONFIG) from None
    if config.keylog.path is not None:
        from gdoiserver.keylog import KeyLog, KeyLogError

        try:
            KeyLog(config.keylog.path).check()  # a keylog others may read is refused like every secret file
        except KeyLogError as e:
            print(f"gdoi: configuration error: keylog.path: {e}", file=sys.stderr)
            raise SystemExit(os.EX_CONFIG) from None
    from twisted.internet import reactor

    try:
        key_server = KeyServer(config, reactor, policy, config_path=path, exit_on_error=True)
    except StoreError as e:
        print(f"gdoi: key store error (store.path): {e}", file=sys.stderr)
        raise SystemExit(os.EX_CANTCREAT) from None
    except ConfigError as e:
        print(f"gdoi: configuration error: {e}", file=sys.stderr)
        raise SystemExit(os.EX_CONFIG) from None
    log.info("configuration read from {path}", path=path)
    parent = getattr(options, "parent", None)
    top = ObservedService(twistd_observer(config.server.log_format, parent) if parent is not None else None)
    key_server.setServiceParent(top)
    top.key_server = key_server
    _tame_the_collector(top)
    _reload_on_sighup(key_server, reactor)
    return top


def _tame_the_collector(parent) -> None:
    """Full garbage collections stop the reactor longer as SAs and members accumulate (350 ms at 7,000 members,
    docs/performance.md): every second, the young generations are collected and what survives is moved out of
    their reach (``gc.freeze``); once an hour
    it is brought back and collected, so that cycles which became garbage after they were frozen are freed."""
    import gc

    from twisted.application.internet import TimerService

    def each_second():
        gc.collect(1)  # the young generations first: garbage cycles made since the last second are not frozen
        gc.freeze()

    def hourly():
        gc.unfreeze()
        gc.collect()
        gc.freeze()

    TimerService(1.0, each_second).setServiceParent(parent)
    TimerService(3600.0, hourly).setServiceParent(parent)


def _reload_on_sighup(key_server, reactor) -> None:
    """SIGHUP reloads the configuration (as ``gdoictl reload``)."""
    import signal

    def on_hup(signum, frame):
        reactor.callFromThread(lambda: key_server.reload().addErrback(lambda f: None))

    try:
        signal.signal(signal.SIGHUP, on_hup)
    except ValueError:  # not the main thread (a test)
        pass
