"""lcow as a Docker graph-driver plugin (v1, HTTP over a unix socket; SPEC §9).

``lcow plugin serve`` runs it; docs/plugin.md says how to use it with dockerd. Modules:
:mod:`~lcow.plugin.requests` decodes calls (pure, shared with fuzzing), :mod:`~.protocol`
builds answers, :mod:`~.handlers` serves them over the driver, :mod:`~.streams` bridges the
streamed bodies of ApplyDiff and Diff, :mod:`~.state` keeps Init across restarts and
:mod:`~.server` runs it all.
"""
