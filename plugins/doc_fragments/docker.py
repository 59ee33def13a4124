# Copyright (c) dogestry developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:

    # The Docker daemon connection, as community.docker names it (its doc fragment community.docker.docker):
    # the same option names, aliases, environment variables and defaults, but for timeout.
    DOCUMENTATION = r"""
options:
  docker_host:
    description:
      - The Docker daemon to use, V(unix:///path/docker.sock), V(tcp://host:2375), or V(tcp://host:2376) with O(tls) or
        O(validate_certs) (reached over HTTPS then).
      - One controller can feed several daemons by looping over hosts.
      - If the value is not specified in the task, the value of environment variable E(DOCKER_HOST) will be used instead.
    type: str
    default: unix:///var/run/docker.sock
    aliases: [docker_url]
  tls_hostname:
    description:
      - When verifying the authenticity of the Docker daemon, the name its certificate must carry, if it is not the
        host of O(docker_host) (a daemon reached by IP address, say).
      - If the value is not specified in the task, the value of environment variable E(DOCKER_TLS_HOSTNAME) will be used instead.
    type: str
  api_version:
    description:
      - The version of the Docker API to speak. V(auto) negotiates the newest both sides know.
      - If the value is not specified in the task, the value of environment variable E(DOCKER_API_VERSION) will be used instead.
    type: str
    default: auto
    aliases: [docker_api_version]
  timeout:
    description:
      - Seconds to wait for a Docker API answer before giving up.
      - The default is longer than community.docker's 60 s because Docker 20.10 sends the first byte of a C(docker save)
        only once it has exported the whole image.
      - If the value is not specified in the task, the value of environment variable E(DOCKER_TIMEOUT) will be used instead.
    type: int
    default: 300
  ca_path:
    description:
      - The CA certificate that signed the Docker daemon's certificate, to verify it with (O(validate_certs)).
      - If the value is not specified in the task and the environment variable E(DOCKER_CERT_PATH) is set, the file C(ca.pem)
        from that directory will be used, if it exists.
    type: path
    aliases: [ca_cert, tls_ca_cert, cacert_path]
  client_cert:
    description:
      - Path to the client's TLS certificate file, for a daemon that checks its clients (C(dockerd --tlsverify)).
      - If the value is not specified in the task and the environment variable E(DOCKER_CERT_PATH) is set, the file
        C(cert.pem) from that directory will be used, if it exists.
    type: path
    aliases: [tls_client_cert, cert_path]
  client_key:
    description:
      - Path to the client's TLS key file. Goes with O(client_cert).
      - If the value is not specified in the task and the environment variable E(DOCKER_CERT_PATH) is set, the file
        C(key.pem) from that directory will be used, if it exists.
    type: path
    aliases: [tls_client_key, key_path]
  tls:
    description:
      - Secure the connection to the API by using TLS without verifying the authenticity of the Docker daemon. If
        O(validate_certs) is V(true) as well, it takes precedence.
      - If the value is not specified in the task, the value of environment variable E(DOCKER_TLS) will be used instead.
    type: bool
    default: false
  validate_certs:
    description:
      - Secure the connection to the API by using TLS and verifying the authenticity of the Docker daemon (with O(ca_path),
        or the system's CAs without it).
      - This is the Docker daemon's, as in community.docker. The S3 endpoint's is O(s3_validate_certs).
      - If the value is not specified in the task, the value of environment variable E(DOCKER_TLS_VERIFY) will be used instead.
    type: bool
    default: false
    aliases: [tls_verify]
notes:
  - The Docker connection options have community.docker's names and meanings, so the same settings (a YAML anchor, say)
    can be given to C(group/dogestry.dogestry.dogestry) and C(group/community.docker.docker) in C(module_defaults).
    E(DOCKER_HOST), E(DOCKER_TLS), E(DOCKER_TLS_VERIFY), E(DOCKER_CERT_PATH), E(DOCKER_TLS_HOSTNAME), E(DOCKER_API_VERSION)
    and E(DOCKER_TIMEOUT) are read as community.docker reads them.
"""

    # For modules that talk to a Docker daemon.
    REQUIREMENTS = r"""
options: {}
requirements:
  - docker (Docker SDK for Python) >= 7.1.0
  - lz4 >= 4.0.0
  - zstandard >= 0.19.0 (to push the zstd-compressed layers of Docker's containerd image store)
"""

    # For modules that never talk to Docker: they take the options all the same, so that module_defaults for the
    # action group can set them once (a module without them would fail on them).
    UNUSED = r"""
options: {}
notes:
  - This module does not talk to Docker. It accepts the Docker connection options (O(docker_host), O(validate_certs)...)
    and ignores them, so that one C(module_defaults) entry for the action group can set them for
    M(dogestry.dogestry.dogestry_push) and M(dogestry.dogestry.dogestry_pull).
"""
