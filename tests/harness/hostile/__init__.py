"""A corpus of hostile layer tars, what each must produce, and the runner that checks it
(hardening issue, part 1).

Every :class:`~.case.HostileCase` has a name, a description, a builder that streams its tar
(headers are written byte by byte by :mod:`.tarbuild`, so malformed, huge and truncated members
cost nothing to make) and an :class:`~.expect.Expect`: either an error category from
:mod:`lcow.errors` whose message must name the entry, or success with a property of the
resulting image checked through a :class:`~.probes.Probe` (the ext4 reader, or a kernel mount).
Every sink that turns a tar into a layer (:mod:`.sinks`: ``tar2ext4``, ``Driver.apply_diff``,
``lcow import``, the plugin's ApplyDiff) must meet the same expectation; ``extract_archive``
(Docker's ``Untar`` into a view) meets :attr:`~.case.HostileCase.extract_expect`, which differs
only where Docker's semantics do (:mod:`.extract`, each difference with its reason).
:mod:`.run` runs the cases and checks that a failure leaves nothing behind.

The cases (:mod:`.cases_paths`, :mod:`.cases_sizes`, :mod:`.cases_structure`, gathered in
:mod:`.corpus`) assume LCOW's conversion options (AUFS whiteouts converted, VHD footer) and the
default limits of :class:`~lcow.convert.options.ConvertOptions`; large ones (``slow=True``) are
written gzip-compressed and streamed.
"""
