# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
"""The store's format: keys, references, manifests, OCI documents. Pure: no I/O; imports _errors only (docs/ARCHITECTURE.md)."""
