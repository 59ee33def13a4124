# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
"""The engine's operations: push, pull, tags, leases, prune, verify, sign, the loopback endpoint; imports every layer below, no front end."""
