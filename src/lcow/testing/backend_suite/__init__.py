"""Driver conformance suite: LCOW's exact results and data-root layout on any backend (SPEC §1-§3).

Every case takes a :class:`DriverFactory` (``make(home, options)`` returns a driver on ``home``
using the backend under test) and a scratch directory, and checks only what SPEC §1-§3 fix:
the operations' results and error texts, the folders and files of the data root after each
operation, ``layerchain.json`` byte for byte, sandbox sizes, option parsing, crash-safe writes
(no temporaries left by a failed ApplyDiff) and the reference counts of Get and Put. Content is
put into layers with ApplyDiff only, so read-only backends run every case.

The on-disk names (``layer.vhd``, ``sandbox.vhdx``, ``layerchain.json``, ``-removing``) are
spelled out in :mod:`.spec` rather than imported, so the suite is an oracle independent of
:mod:`lcow.storage`. Cases are plain functions using ``assert`` (:mod:`.layout`, :mod:`.content`,
:mod:`.views`, :mod:`.diff`; their tools in :mod:`.helpers`), all importable from this package;
a test module runs each one per backend (``tests/conformance/test_driver.py``). Cases that make
sandboxes need ``mke2fs``.
"""

from __future__ import annotations

from lcow.testing.backend_suite.content import (
    test_apply_diff_failure,
    test_apply_diff_failure_keeps_sandbox,
    test_apply_diff_layout,
    test_apply_diff_missing_layer,
    test_apply_diff_replaces_sandbox,
    test_apply_diff_unpack_size,
    test_create_read_write_default,
    test_create_read_write_exact_size,
    test_create_read_write_sized,
    test_sandbox_option_error,
)
from lcow.testing.backend_suite.diff import (
    test_empty_child_of_content,
    test_empty_layer_diff,
    test_missing_parent_is_not_found,
)
from lcow.testing.backend_suite.helpers import layer_tar, leftovers, unpack_size
from lcow.testing.backend_suite.layout import (
    test_bad_ids,
    test_corrupt_chain,
    test_create_again,
    test_create_layout,
    test_create_missing_parent,
    test_exists,
    test_init_layout,
    test_init_option_error,
    test_init_options_accepted,
    test_init_unknown_lcow_key,
    test_metadata_and_layer_path,
    test_moved_root,
    test_string_and_status,
    test_windows_chain,
)
from lcow.testing.backend_suite.spec import (
    BAD_IDS,
    CHAIN,
    DEFAULT_SANDBOX,
    INIT_OPTION_ERRORS,
    LAYER_VHD,
    LONGEST_ID,
    OWN_METADATA,
    REMOVING,
    SANDBOX_OPTION_ERRORS,
    SANDBOX_VHDX,
    DriverFactory,
)
from lcow.testing.backend_suite.views import (
    test_cleanup_sweeps,
    test_get_create_only,
    test_get_missing_ancestor,
    test_get_put_counts,
    test_longest_id,
    test_remove,
    test_remove_tears_down_views,
)

__all__ = [
    "BAD_IDS",
    "CHAIN",
    "DEFAULT_SANDBOX",
    "INIT_OPTION_ERRORS",
    "LAYER_VHD",
    "LONGEST_ID",
    "OWN_METADATA",
    "REMOVING",
    "SANDBOX_OPTION_ERRORS",
    "SANDBOX_VHDX",
    "DriverFactory",
    "layer_tar",
    "leftovers",
    "test_apply_diff_failure",
    "test_apply_diff_failure_keeps_sandbox",
    "test_apply_diff_layout",
    "test_apply_diff_missing_layer",
    "test_apply_diff_replaces_sandbox",
    "test_apply_diff_unpack_size",
    "test_bad_ids",
    "test_cleanup_sweeps",
    "test_corrupt_chain",
    "test_create_again",
    "test_create_layout",
    "test_create_missing_parent",
    "test_create_read_write_default",
    "test_create_read_write_exact_size",
    "test_create_read_write_sized",
    "test_empty_child_of_content",
    "test_empty_layer_diff",
    "test_exists",
    "test_get_create_only",
    "test_get_missing_ancestor",
    "test_get_put_counts",
    "test_init_layout",
    "test_init_option_error",
    "test_init_options_accepted",
    "test_init_unknown_lcow_key",
    "test_longest_id",
    "test_metadata_and_layer_path",
    "test_missing_parent_is_not_found",
    "test_moved_root",
    "test_remove",
    "test_remove_tears_down_views",
    "test_sandbox_option_error",
    "test_string_and_status",
    "test_windows_chain",
    "unpack_size",
]
