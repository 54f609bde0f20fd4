"""Crash-safety harness: SIGKILL a driver operation at a random moment, recover, verify.

Part 3 of the hardening issue. One *kill* is:

1. **prepare** (in the harness process, with its own :class:`~lcow.graphdriver.driver.Driver`):
   make the data root hold what the operation needs — a fresh Create-only layer for ApplyDiff, a
   layer with content for Remove, no layers of the image for import, an outstanding Get for Put —
   while it keeps a model of every layer as last verified (kind, disk identity, content);
2. **kill**: start a child process (``python -m tests.harness.crash.worker child …``) that opens
   a driver, logs ``start``, runs the one operation, logs ``done``; SIGKILL it after a delay
   drawn uniformly over 1.1 times the median duration of the operation's variant (each variant —
   ApplyDiff into a new layer or over a sandbox, Get of a read-only chain or of a sandbox … — is
   first run three times unkilled to measure it), so kills land in every phase and some after
   the end;
3. **recover** in a fresh process (``python -m tests.harness.crash.worker recover …``): open the
   driver (the host backend reconciles its mount table with the kernel here), check the counts
   the table then holds against what the child's log allows, run ``cleanup``, check that nothing
   is mounted, attached or running for the root, re-run an interrupted import, then Get +
   readdir + Put every layer and read every new ``layer.vhd`` back through ``Driver.diff``
   against the tar it must hold;
4. **verify** the files (harness process): no ``*.tmp-*`` or ``-removing`` left anywhere, every
   ``layerchain.json`` names existing folders, every ``layer.vhd`` passes ``e2fsck -fn``, every
   sandbox ``qemu-img check``; a sandbox written through a view also passes ``e2fsck -fn`` after
   ``qemu-img convert``; each layer is *whole or absent* against the outcomes the operation
   allows (absent, Create-only, or complete with the expected content); layers the operation did
   not touch are unchanged; files fsynced through a view before the kill are still there.

Operations: ``apply_diff`` (a tar of ~5.7 MB and 1,265 entries into a new layer, or over a
layer's sandbox), ``create_rw`` (default size: a copy of the cached template), ``remove`` (a
leaf with content; on the host backend sometimes while mounted), ``import`` (``lcow import`` of a
three-layer ``docker save`` tarball, run through the CLI's ``main``), and on the host backend
``get`` (mounting a chain, exporting sandboxes through qemu-storage-daemon, writing and fsyncing
a file into a writable view) and ``put``.

Modules: :mod:`.fixtures` (the tars and the image), :mod:`.rootstate` (what a data root holds
and what must not be left), :mod:`.worker` (the child and the recovery, each a process),
:mod:`.checks` (step 4), :mod:`.records` (what a kill and a campaign found) and
:mod:`.harness` (steps 1-3 and the campaign). :func:`.harness.run_kills` runs a campaign and
returns a :class:`.records.Campaign`; ``tools/crash_harness.py`` is the command line and
``tests/hardening/test_crash_kills.py`` the CI-sized run.
"""
