"""The Hold issue's attack suite (tests/security) again, every sandbox on an image root.

Each test of tests/security is collected here a second time, with `Sandbox` defaulting to the
test image (its workspace at /workspace, as on the host root): the attacks must fail the same way
when the agent's root is a writable overlay of an image instead of the host's read-only system.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.images import ImageStore
from corral.sandbox import sandbox as sandbox_mod
from tests.security.test_grade_integrity import (  # noqa: F401 - collected here again
    test_a_report_forged_on_the_control_channel_is_refused_or_recorded,
    test_framing_functions_cannot_be_redefined_and_reports_stay_true,
    test_graded_step_ignores_whatever_the_agent_redefined,
    test_harness_command_is_not_reachable_by_agent_processes,
)
from tests.security.test_identity import (  # noqa: F401
    test_each_sandbox_has_its_own_unprivileged_host_id,
    test_sandbox_processes_hold_no_host_root_and_no_capability,
    test_setuid_file_left_in_workspace_is_not_usable_on_the_host,
    test_workspace_files_are_given_back_and_reachable_from_root_only_dirs,
)
from tests.security.test_kernel_surface import (  # noqa: F401
    test_32_bit_syscall_abi_is_refused,
    test_escape_syscalls_and_socket_families_are_refused,
    test_host_secrets_and_supervisor_environment_are_not_readable,
    test_no_file_under_proc_sys_or_sys_is_writable,
)
from tests.security.test_protected_paths import (  # noqa: F401
    test_agent_file_api_write_to_protected_path_is_refused_and_recorded,
    test_agent_symlink_cannot_break_the_next_shell_start,
    test_late_harness_file_in_protected_path_holds,
)
from tests.security.test_records import (  # noqa: F401
    test_a_full_tmp_is_recorded,
    test_dangerous_workspaces_are_refused,
    test_filling_the_workspace_is_a_resource_event,
    test_store_is_not_reachable_from_the_sandbox,
    test_tmp_is_capped_by_the_disk_limit,
    test_workspace_holding_corral_home_is_refused,
)


@pytest.fixture(autouse=True)
def _on_the_image(corral_home: Path, _cached_home: Path, swe, monkeypatch: pytest.MonkeyPatch
                  ) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    # this test's own CORRAL_HOME (the tests look for their events there), the shared image cache
    ImageStore(_cached_home).add(str(swe["rome"]), name="rome")
    (corral_home / "images").symlink_to(_cached_home / "images")
    real_init = sandbox_mod.Sandbox.__init__

    def init(self, *args, **kw):  # type: ignore[no-untyped-def]
        kw.setdefault("image", "rome")
        real_init(self, *args, **kw)

    monkeypatch.setattr(sandbox_mod.Sandbox, "__init__", init)
