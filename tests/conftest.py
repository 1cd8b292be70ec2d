"""Session fixtures that start real servers for the tests.

`services` starts the embedded SeaweedFS S3 store and MLflow tracking server (the same code as
`progan services up`) in a temporary state folder, stops them by pid at the end of the session and
deletes the folder. `service_env` also puts their client settings into os.environ for the session.
"""

from __future__ import annotations

import shutil
import signal
import time

import pytest

from orchestrator import services as embedded_services
from orchestrator.services.state import STATE_DIR_VARIABLE, StatePaths, read_env_file

# The state folder is deleted right after the stop, so a graceful SeaweedFS shutdown (about 16 s)
# would buy nothing; SIGKILL follows after this many seconds.
TEARDOWN_STOP_TIMEOUT_S = 2.0

# Client variables that would redirect or break requests to the embedded servers if a developer
# has them set for another S3 store.
FOREIGN_AWS_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                         "AWS_PROFILE", "AWS_REGION")


def _interrupt_on_sigterm(signum, frame):
    raise KeyboardInterrupt(f"received signal {signum}")


@pytest.fixture(scope="session")
def services(tmp_path_factory):
    """Start SeaweedFS and MLflow; yield {"state_dir", "env", "status", "startup_seconds"}.

    `env` is read from STATE/env alone, so variables set in the developer's shell cannot point the
    tests at another server. SIGTERM (from `timeout` or a CI runner) is turned into
    KeyboardInterrupt while the servers run, so pytest still stops them; SIGKILL cannot be caught.
    """
    state_dir = tmp_path_factory.mktemp("progan-state")
    previous_handler = signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    started_at = time.monotonic()
    try:
        report = embedded_services.up(state_dir)
        startup_seconds = time.monotonic() - started_at
        env = read_env_file(StatePaths.resolve(state_dir).env_file)
        yield {"state_dir": state_dir, "env": env, "status": report,
               "startup_seconds": startup_seconds}
    finally:
        embedded_services.down(state_dir, timeout_s=TEARDOWN_STOP_TIMEOUT_S)
        shutil.rmtree(state_dir, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous_handler)


@pytest.fixture(scope="session")
def service_env(services):
    """Apply the services' client settings (and PROGAN_STATE_DIR) to os.environ for the rest of
    the session; yield the applied variables."""
    applied = {**services["env"], STATE_DIR_VARIABLE: str(services["state_dir"])}
    with pytest.MonkeyPatch.context() as patch:
        for name in FOREIGN_AWS_VARIABLES:
            patch.delenv(name, raising=False)
        for name, value in applied.items():
            patch.setenv(name, value)
        yield applied


@pytest.fixture(scope="session")
def ray_2_cpus(service_env):
    """A local Ray with 2 CPUs for the session, with the services' variables sent to its workers."""
    import ray

    from orchestrator.environment import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def faces_in_s3(service_env):
    """The built-in faces prepared into the embedded S3 store; yields the dataset URI."""
    from orchestrator.cli import main

    dest = "s3://progan/datasets/test-faces"
    assert main(["prepare-data", "builtin:lfw-faces", dest, "--output", "json"]) == 0
    return dest
