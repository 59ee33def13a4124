# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""The Ansible side of the engine: common options, building remotes and daemons, failing cleanly."""

from __future__ import annotations

import traceback

from ansible.module_utils.basic import AnsibleModule, env_fallback, missing_required_lib

from ._compress import HAS_LZ4, LZ4_IMPORT_ERROR
from ._docker import DEFAULT_DOCKER_HOST, DOCKER_IMPORT_ERROR, HAS_DOCKER, Daemon
from ._errors import DogestryError
from ._remotes import remote_from_urls
from ._repository import Repository
from ._transfer import MAX_JOBS
from ._version import installed_versions, require_for_url, too_old

REMOTE_ARGSPEC = dict(
    remote=dict(type="str", required=True),
    fallback_remotes=dict(type="list", elements="str", default=[]),
    jobs=dict(type="int", default=4),
    access_key=dict(type="str", aliases=["aws_access_key_id", "aws_access_key"], no_log=False),
    secret_key=dict(type="str", aliases=["aws_secret_access_key", "aws_secret_key"], no_log=True),
    session_token=dict(type="str", aliases=["aws_session_token"], no_log=True),
    profile=dict(type="str", aliases=["aws_profile"]),
    region=dict(type="str", aliases=["aws_region"]),
    endpoint_url=dict(type="str", aliases=["aws_endpoint_url"]),
    validate_certs=dict(type="bool", default=True),
    ca_bundle=dict(type="path", aliases=["aws_ca_bundle"]),
)
S3_OPTIONS = ("access_key", "secret_key", "session_token", "profile", "region", "endpoint_url",
              "validate_certs", "ca_bundle")

DOCKER_ARGSPEC = dict(
    docker_host=dict(type="str", aliases=["docker_url"], default=DEFAULT_DOCKER_HOST,
                     fallback=(env_fallback, ["DOCKER_HOST"])),
    timeout=dict(type="int", default=300),
)


def _repository_from_params(params) -> Repository:
    """Pure: params -> Repository; raises DogestryError."""
    if params["jobs"] is not None and not 1 <= params["jobs"] <= MAX_JOBS:
        raise DogestryError("jobs must be between 1 and %d, got %d" % (MAX_JOBS, params["jobs"]))
    options = {name: params.get(name) for name in S3_OPTIONS}
    options["jobs"] = params["jobs"]
    url = params.get("signed_url") or params["remote"]     # a signed URL wins over a remote from module_defaults
    urls = [url] + ([] if params.get("signed_url") else list(params.get("fallback_remotes") or []))
    for each in urls:
        require_for_url(each)
    repo = Repository(remote_from_urls(urls, **options))
    if params.get("peers_file"):
        # content-addressed objects through the fleet's peers, verified in a spool of this run's own
        import atexit
        import shutil
        import tempfile
        from ._peers import pulling_through_peers
        spool = tempfile.mkdtemp(prefix="dogestry-pull-")
        atexit.register(shutil.rmtree, spool, True)
        repo.remote = pulling_through_peers(repo.remote, params["peers_file"], spool)
    return repo


class DogestryModule:
    """Wraps AnsibleModule: merges the common options, checks libraries, maps DogestryError to fail_json."""

    def __init__(self, argument_spec, needs_docker=True, **kwargs):
        spec = dict(REMOTE_ARGSPEC)
        if needs_docker:
            spec.update(DOCKER_ARGSPEC)
        spec.update(argument_spec)
        self.module = AnsibleModule(argument_spec=spec, **kwargs)
        self.params = self.module.params
        self.check_mode = self.module.check_mode
        self.diff_mode = self.module._diff
        if needs_docker and not HAS_DOCKER:
            self.module.fail_json(msg=missing_required_lib("docker"), exception=DOCKER_IMPORT_ERROR)
        if needs_docker and not HAS_LZ4:
            self.module.fail_json(msg=missing_required_lib("lz4"), exception=LZ4_IMPORT_ERROR)
        old = too_old(installed_versions(), ("docker", "lz4", "zstandard") if needs_docker else ())
        if old:
            self.module.fail_json(msg="too old on %s: %s; upgrade with pip" % (self.module._name, ", ".join(old)))

    def repository(self) -> Repository:
        try:
            return _repository_from_params(self.params)
        except DogestryError as exc:
            self.fail_json_dogestry(exc)

    def daemon(self) -> Daemon:
        try:
            return Daemon(self.params["docker_host"], self.params["timeout"])
        except DogestryError as exc:
            self.fail_json_dogestry(exc)

    def fail_json_dogestry(self, exc: Exception, **result):
        """One-line msg for users; the traceback rides along for -vvv."""
        self.module.fail_json(msg=str(exc), exception=traceback.format_exc(),
                              dependency_versions=installed_versions(), **result)

    def exit_json(self, **result):
        self.module.exit_json(**result)
