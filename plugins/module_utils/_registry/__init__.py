# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
"""The accelerator: the OCI distribution API over a remote (read and write), its server and auth; a front end, imports everything below."""
