#!/usr/bin/python
# Copyright (c) dogestry developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: dogestry_sign
short_description: Sign a release on a dogestry remote, so that hosts run only what the release key signed
version_added: 0.3.0
description:
  - Signs what a tag names on the remote with a private key the operator holds, and stores the signature
    on the remote as an OCI referrer of the signed manifest, in the format C(cosign sign --key) writes (a
    sigstore bundle v0.3 holding a DSSE envelope; no transparency log, no certificate).
    C(cosign verify --key KEY.pub --insecure-ignore-tlog) through C(dogestry serve) checks it, and
    M(dogestry.dogestry.dogestry_pull) with O(dogestry.dogestry.dogestry_pull#module:trusted_keys) and
    C(dogestry serve --require-signature) refuse what no trusted key signed.
  - What is signed is the manifest digest the tag names. For an image M(dogestry.dogestry.dogestry_push)
    stored, it is the digest C(dogestry serve) serves it under and C(docker pull) records (the same on every
    host). For an image or multi-platform index pushed through C(dogestry serve) (C(docker push),
    C(skopeo copy --all)), it is the digest the client pushed; an index's signature covers the platform images
    it names.
  - Signing again with the same key changes nothing. A tag moved to another image afterwards is not signed
    until that image is signed.
  - The signature is written as the registry push path writes OCI content (blobs, then the manifest, then its
    referrer record, create-only); the remote is raised to format version 2 if it was still version 1.
extends_documentation_fragment:
  - dogestry.dogestry.remote
  - dogestry.dogestry.remote.s3
  - dogestry.dogestry.docker
  - dogestry.dogestry.docker.unused
  - dogestry.dogestry.attributes
  - dogestry.dogestry.attributes.actiongroup_dogestry
attributes:
  check_mode:
    support: full
    details: Reports whether a signature by this key would be stored.
  diff_mode:
    support: none
options:
  image:
    description:
      - What to sign, as C(name:tag) on the remote (a name alone means V(latest)), or a unique image-ID prefix.
    type: str
    required: true
    aliases: [name]
  private_key:
    description:
      - The signing key, a PEM private key (ECDSA P-256, P-384 or P-521, or RSA of 2048 bits or more), for
        example from a vault variable. Never logged.
      - Mutually exclusive with O(private_key_path); one of them is required.
      - C(openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out release.pem) makes one,
        C(openssl pkey -in release.pem -pubout -out release.pub) its public key for the hosts.
    type: str
  private_key_path:
    description:
      - Path of a PEM private key file on the host that runs the module.
    type: path
  private_key_passphrase:
    description:
      - Password of an encrypted PEM private key. Never logged.
    type: str
requirements:
  - cryptography >= 38.0
seealso:
  - module: dogestry.dogestry.dogestry_push
  - module: dogestry.dogestry.dogestry_pull
    description: Its O(dogestry.dogestry.dogestry_pull#module:trusted_keys) refuses what no trusted key signed.
author:
  - dogestry developers (@dogestry)
"""

EXAMPLES = r"""
- name: Publish, then sign the release with the key kept in the vault
  hosts: build
  tasks:
    - dogestry.dogestry.dogestry_push:
        remote: s3://ops-goodies/docker-repo/
        images: [myapp:20131210]
    - dogestry.dogestry.dogestry_sign:
        remote: s3://ops-goodies/docker-repo/
        image: myapp:20131210
        private_key: "{{ vault_release_signing_key }}"

- name: Sign with a key file on the build host
  dogestry.dogestry.dogestry_sign:
    remote: /srv/dogestry
    image: myapp:20131210
    private_key_path: /etc/dogestry/release.pem
    private_key_passphrase: "{{ vault_release_key_password }}"
"""

RETURN = r"""
image:
  description: The tag whose target was signed, C(name:tag); null when signed by image-ID prefix.
  returned: always
  type: str
  sample: myapp:20131210
digest:
  description: The manifest digest signed (what C(cosign verify) names and C(docker pull) records).
  returned: always
  type: str
  sample: sha256:f9f21b8a4ff171bd9fdc5062c31bf4be6d558b69ea2d05f328fab23ea8bdfe45
media_type:
  description: The media type of the signed manifest (an image manifest or an index).
  returned: always
  type: str
  sample: application/vnd.oci.image.manifest.v1+json
key_id:
  description: The signing key's id, base64 of the sha256 of its DER public key (what cosign calls the key hint).
  returned: always
  type: str
  sample: sMv7B8IqiZVqVg2K8hTreTJMTOcwj5DET6a6dpFqFJk=
signature:
  description:
    - Digest of the signature's manifest on the remote (a referrer of RV(digest)); the one already there when
      nothing changed; null in check mode when a signature would be stored.
  returned: always
  type: str
reason:
  description: What was done, or null when the release was already signed by this key.
  returned: always
  type: str
  sample: "myapp:20131210 (sha256:f9f21b8a4ff1…): signature by key sMv7B8IqiZVqVg2K8hTreTJMTOcwj5DET6a6dpFqFJk= stored"
"""

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.dogestry.dogestry.plugins.module_utils._errors import DogestryError
from ansible_collections.dogestry.dogestry.plugins.module_utils._common import DogestryModule
from ansible_collections.dogestry.dogestry.plugins.module_utils._ops.signing import (
    CRYPTOGRAPHY_IMPORT_ERROR, HAS_CRYPTOGRAPHY, execute_sign, load_signing_key, plan_sign,
)


class DogestrySigner:
    def __init__(self, module: DogestryModule):
        self.module = module
        params = module.params
        pem, name = params["private_key"], "private_key"
        if pem is None:
            name = params["private_key_path"]
            try:
                with open(name, "rb") as f:
                    pem = f.read(1 << 20)
            except OSError as exc:
                raise DogestryError("private_key_path %s cannot be read: %s" % (name, exc.strerror or exc))
        self.key = load_signing_key(pem, params["private_key_passphrase"], name)
        self.repo = module.repository()

    def sign(self):
        plan = plan_sign(self.repo, self.module.params["image"], self.key)
        result = plan.result() if self.module.check_mode else execute_sign(self.repo, plan, self.key)
        if result["reason"] is None:
            result["msg"] = "%s is already signed by key %s" % (plan.ref or plan.requested, self.key.key_id)
        else:
            result["msg"] = ("would sign: " if self.module.check_mode else "signed: ") + result["reason"]
        return result


def main():
    argument_spec = dict(
        image=dict(type="str", required=True, aliases=["name"]),
        private_key=dict(type="str", no_log=True),
        private_key_path=dict(type="path"),
        private_key_passphrase=dict(type="str", no_log=True),
    )
    module = DogestryModule(argument_spec, needs_docker=False, supports_check_mode=True,
                            mutually_exclusive=[("private_key", "private_key_path")],
                            required_one_of=[("private_key", "private_key_path")])
    if not HAS_CRYPTOGRAPHY:
        module.module.fail_json(msg=missing_required_lib("cryptography"), exception=CRYPTOGRAPHY_IMPORT_ERROR)
    try:
        module.exit_json(**DogestrySigner(module).sign())
    except DogestryError as exc:
        module.fail_json_dogestry(exc)


if __name__ == "__main__":
    main()
