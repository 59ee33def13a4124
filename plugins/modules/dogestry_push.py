#!/usr/bin/python
# Copyright (c) dogestry developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: dogestry_push
short_description: Push Docker images from a daemon into a dogestry remote
version_added: 0.1.0
description:
  - Stores images of a Docker daemon in a remote (a directory or an S3 bucket) in dogestry's
    content-addressed format, so that hosts can pull them without a registry.
  - Only layers the remote lacks are read from C(docker save), hashed, compressed and uploaded,
    in one pass. When the remote already has the image under the tag, nothing is saved.
  - On Docker's containerd image store, when the daemon shares the host's network namespace and the
    Python package C(cheroot) is installed, Docker's own push sends the image to an endpoint the module
    opens on 127.0.0.1 for the task, instead of C(docker save); Docker then sends only the layers the
    remote lacks. The result and what is stored are the same.
    A daemon on another host (C(docker_host) tcp:// or ssh:// to another address, with TLS or without) cannot
    reach that endpoint, so there the module uses C(docker save), as on the classic image store.
    So it does when Docker fails without reaching the endpoint (a tcp:// address on this host that forwards to a
    daemon elsewhere), before anything was moved.
  - Blobs are written first, then the image config and manifest, then the tag, so a tag never
    points at incomplete data, even when a push is interrupted.
extends_documentation_fragment:
  - dogestry.dogestry.remote
  - dogestry.dogestry.remote.s3
  - dogestry.dogestry.docker
  - dogestry.dogestry.docker.requirements
  - dogestry.dogestry.attributes
  - dogestry.dogestry.attributes.actiongroup_dogestry
attributes:
  check_mode:
    support: full
    details: Reports exactly which layers a real run would upload.
  diff_mode:
    support: full
options:
  images:
    description:
      - Images to push, as C(name:tag) (V(myapp:20131210), V(registry.example.com:5000/team/app:1.2)).
        A name without a tag means V(latest).
      - The remote tag is the same C(name:tag).
    type: list
    elements: str
    required: true
    aliases: [image]
  compression:
    description:
      - How new layers are stored. V(lz4) (one lz4 frame per layer) is fast to write and read;
        V(none) stores the tar as it is.
      - Layers already on the remote are reused however they were stored.
    type: str
    choices: [lz4, none]
    default: lz4
seealso:
  - module: dogestry.dogestry.dogestry_pull
  - module: dogestry.dogestry.dogestry_tag
  - module: dogestry.dogestry.dogestry_signed_url
  - module: community.docker.docker_image_push
    description: Pushes an image to a registry.
  - module: community.docker.docker_image_export
    description: Writes images to a C(docker save) archive, as this module reads them.
author:
  - dogestry developers (@dogestry)
"""

EXAMPLES = r"""
- name: Push a release into a directory remote
  dogestry.dogestry.dogestry_push:
    remote: /srv/dogestry
    images:
      - myapp:20131210
      - redis:7

- name: Push to S3, credentials from the environment or instance role
  dogestry.dogestry.dogestry_push:
    remote: s3://ops-goodies/docker-repo/?region=us-west-2
    images: [myapp:20131210]

- name: Push from a Docker daemon behind TLS (dockerd --tlsverify) to a MinIO bucket
  dogestry.dogestry.dogestry_push:
    remote: s3://images/prod/
    endpoint_url: https://minio.internal:9000
    docker_host: tcp://build-1:2376
    validate_certs: true                # the daemon's certificate, as in community.docker
    ca_path: /etc/dogestry/docker/ca.pem
    client_cert: /etc/dogestry/docker/cert.pem
    client_key: /etc/dogestry/docker/key.pem
    images: [myapp:20131210]
"""

RETURN = r"""
images:
  description: One entry per pushed image.
  returned: always
  type: list
  elements: dict
  contains:
    image:
      description: The remote tag, C(name:tag).
      type: str
      sample: myapp:20131210
    image_id:
      description:
        - The image's identity on every engine, the sha256 of its config. On the containerd image store the
          daemon does not tell it without exporting the image, so in check mode it is V(null) until the
          remote has seen the image.
      type: str
      sample: sha256:1dc66c9bbfeef8a4474f44309e2a0ab1a64074b128354400b61c40032c9194f0
    daemon_image_id:
      description:
        - What the Docker daemon calls the image (C(docker image inspect) C(.Id)), that is the config digest on
          the classic image store and the manifest digest on the containerd image store.
      type: str
      sample: sha256:294cbb892f7984b4447d284d271e3e5ae53f6ab187d3c024838c283d1ee144b9
    manifest:
      description: Digest of the image's manifest on the remote. Absent in check mode when not yet known.
      type: str
      sample: sha256:ec43de92e9afef4e5c1b17a126326d6a1841e9d9da1cff7c61605b23104b3684
    changed:
      description: Whether this image changed the remote.
      type: bool
    reason:
      description:
        - What was done, or null. In check mode, what would be done (C(... missing on the remote), C(tag would be set)).
      type: str
      sample: "myapp:20131210: 1 of 3 layers uploaded"
    layers_transferred:
      description: Layer digests (diff_ids) uploaded, or to upload in check mode.
      type: list
      elements: str
    layers_skipped:
      description: Layer digests already on the remote.
      type: list
      elements: str
    bytes_transferred:
      description: Bytes uploaded (as stored, after compression). Absent in check mode.
      type: int
layers_transferred:
  description: Every layer digest uploaded (or to upload, in check mode), over all images.
  returned: always
  type: list
  elements: str
layers_skipped:
  description: Every layer digest that was already on the remote.
  returned: always
  type: list
  elements: str
bytes_transferred:
  description: Bytes uploaded over all images. 0 in check mode.
  returned: always
  type: int
  sample: 1414642
"""

from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.common import human_size
from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.push import execute_push, plan_pushes
from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import DogestryError
from ansible_collections.dogestry.dogestry.plugins.module_utils._format.reference import parse_image_ref
from ansible_collections.dogestry.dogestry.plugins.module_utils._common import DogestryModule


class DogestryPusher:
    def __init__(self, module: DogestryModule):
        self.module = module
        self.images = module.params["images"]
        self.compression = module.params["compression"]
        self.jobs = module.params["jobs"]
        if not self.images:
            raise DogestryError("images is empty: name at least one image to push")
        for image in self.images:
            parse_image_ref(image)          # malformed names fail before any remote or daemon is touched
        self.repo = module.repository()
        self.daemon = module.daemon()

    def push(self):
        plans = plan_pushes(self.daemon, self.repo, self.images)
        reasons = [plan.reason for plan in plans if plan.reason]
        if self.module.check_mode:
            results = [plan.result() for plan in plans]
        else:
            results = [execute_push(self.daemon, self.repo, plan, self.compression, self.jobs) for plan in plans]
        transferred = _merge(result["layers_transferred"] for result in results)
        skipped = [oid for oid in _merge(result["layers_skipped"] for result in results) if oid not in transferred]
        moved = sum(result.get("bytes_transferred", 0) for result in results)
        result = dict(changed=bool(reasons), images=results, layers_transferred=transferred, layers_skipped=skipped,
                      bytes_transferred=moved)
        if not reasons:
            result["msg"] = "all %d image(s) already on %s" % (len(plans), self.repo.url)
        elif self.module.check_mode:
            result["msg"] = "would push to %s: %s" % (self.repo.url, "; ".join(reasons))
        else:
            result["msg"] = "pushed to %s: %d layer(s), %s uploaded, %d layer(s) already there" % (
                self.repo.url, len(transferred), human_size(moved), len(skipped))
        if self.module.diff_mode:
            result["diff"] = dict(
                before={"tags": {str(plan.ref): plan.current_image_id for plan in plans}},
                after={"tags": {str(plan.ref): plan.image_id for plan in plans}},
            )
        return result


def _merge(lists):
    return list(dict.fromkeys(item for items in lists for item in items))


def main():
    argument_spec = dict(
        images=dict(type="list", elements="str", required=True, aliases=["image"]),
        compression=dict(type="str", choices=["lz4", "none"], default="lz4"),
    )
    module = DogestryModule(argument_spec, supports_check_mode=True)
    try:
        module.exit_json(**DogestryPusher(module).push())
    except DogestryError as exc:
        module.fail_json_dogestry(exc)


if __name__ == "__main__":
    main()
