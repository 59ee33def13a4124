# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
#
# PRIVATE to the collection: this file may change without notice.
"""The Ansible side of the engine: common options, building remotes and daemons, failing cleanly.

The Ansible front end: may import Ansible and every layer below; not _cli or _registry.
"""

from __future__ import annotations

import os
import traceback

from ansible.module_utils.basic import AnsibleModule, env_fallback, missing_required_lib

from ._codecs import HAS_LZ4, LZ4_IMPORT_ERROR
from ._docker.daemon import DEFAULT_DOCKER_HOST, DOCKER_IMPORT_ERROR, Daemon, HAS_DOCKER, tls_config
from ._errors import DogestryError
from ._storage.factory import remote_from_urls
from ._storage.repository import Repository
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
    # Not `validate_certs`: that is the Docker daemon's (community.docker's name), and one module_defaults
    # for the action group sets both.
    s3_validate_certs=dict(type="bool", default=True, aliases=["aws_validate_certs"]),
    ca_bundle=dict(type="path", aliases=["aws_ca_bundle"]),
)
S3_OPTIONS = ("access_key", "secret_key", "session_token", "profile", "region", "endpoint_url", "ca_bundle")

# community.docker's connection options (plugins/module_utils/util.py DOCKER_COMMON_ARGS): the same names, aliases,
# environment fallbacks and defaults, but for `timeout` (300 s, not 60: Docker 20.10 sends the first byte of a
# `docker save` only once it has exported the whole image). DOCKER_CERT_PATH is read in _daemon_from_params().
DOCKER_ARGSPEC = dict(
    docker_host=dict(type="str", aliases=["docker_url"], default=DEFAULT_DOCKER_HOST,
                     fallback=(env_fallback, ["DOCKER_HOST"])),
    tls_hostname=dict(type="str", fallback=(env_fallback, ["DOCKER_TLS_HOSTNAME"])),
    api_version=dict(type="str", default="auto", aliases=["docker_api_version"],
                     fallback=(env_fallback, ["DOCKER_API_VERSION"])),
    timeout=dict(type="int", default=300, fallback=(env_fallback, ["DOCKER_TIMEOUT"])),
    ca_path=dict(type="path", aliases=["ca_cert", "tls_ca_cert", "cacert_path"]),
    client_cert=dict(type="path", aliases=["tls_client_cert", "cert_path"]),
    client_key=dict(type="path", aliases=["tls_client_key", "key_path"]),
    tls=dict(type="bool", default=False, fallback=(env_fallback, ["DOCKER_TLS"])),
    validate_certs=dict(type="bool", default=False, aliases=["tls_verify"], fallback=(env_fallback, ["DOCKER_TLS_VERIFY"])),
)


def _repository_from_params(params) -> Repository:
    """Pure: params -> Repository; raises DogestryError."""
    if params["jobs"] is not None and not 1 <= params["jobs"] <= MAX_JOBS:
        raise DogestryError("jobs must be between 1 and %d, got %d" % (MAX_JOBS, params["jobs"]))
    options = {name: params.get(name) for name in S3_OPTIONS}
    options.update(jobs=params["jobs"], validate_certs=params.get("s3_validate_certs", True))
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
        from ._peers.client import pulling_through_peers
        spool = tempfile.mkdtemp(prefix="dogestry-pull-")
        atexit.register(shutil.rmtree, spool, True)
        repo.remote = pulling_through_peers(repo.remote, params["peers_file"], spool)
    return repo


def _daemon_from_params(params, environ=None) -> Daemon:
    """Pure: params -> Daemon (community.docker's rules: validate_certs or tls turn TLS on, validate_certs wins;
    the files of DOCKER_CERT_PATH stand in for ca_path, client_cert and client_key); raises DogestryError."""
    tls = None
    if params["validate_certs"] or params["tls"]:
        tls = tls_config(params["validate_certs"], params["ca_path"], params["client_cert"], params["client_key"],
                         (os.environ if environ is None else environ).get("DOCKER_CERT_PATH"))
    return Daemon(params["docker_host"], params["timeout"], tls, params["tls_hostname"], params["api_version"])


class DogestryModule:
    """Wraps AnsibleModule: merges the common options, checks libraries, maps DogestryError to fail_json.

    Every module takes the Docker options, also those that never talk to Docker (needs_docker=False): a play
    sets them once for the whole action group in module_defaults, and a module that lacked them would fail
    on them ("Unsupported parameters")."""

    def __init__(self, argument_spec, needs_docker=True, **kwargs):
        spec = dict(REMOTE_ARGSPEC)
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
            return _daemon_from_params(self.params)
        except DogestryError as exc:
            self.fail_json_dogestry(exc)

    def fail_json_dogestry(self, exc: Exception, **result):
        """One-line msg for users; the traceback rides along for -vvv."""
        self.module.fail_json(msg=str(exc), exception=traceback.format_exc(),
                              dependency_versions=installed_versions(), **result)

    def exit_json(self, **result):
        self.module.exit_json(**result)
