"""The IPsec DOI (RFC 2407, DOI 1): Quick Mode pairwise IPsec SAs (RFC 2409 section 5.5).

- :mod:`.plugin`: the DOI plugin (:class:`~.plugin.IPsecDOI`, made from the configuration by
  :func:`~.plugin.from_config`), which answers and starts Quick Mode and keeps the SAs until they go;
- :mod:`.quick_mode`: the sans-IO Quick Mode machine, both roles;
- :mod:`.proposals`, :mod:`.algorithms`: suites, SA payloads and transforms; :mod:`.keymat`: KEYMAT per SA;
- :mod:`.selectors`, :mod:`.policy`: traffic selectors and which peer may have which;
- :mod:`.sa`: the established SA; :mod:`.sa_sink`, :mod:`.xfrm`: where it goes (JSON lines, the kernel);
- :mod:`.config`: the ``[ipsec]`` section.

Unlike GDOI's, this plugin is not registered at import: it is made from a configuration
(``gdoiserver.service.GDOIService`` does it) and handed to the Phase 2 dispatcher.
"""
