# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
"""Remotes (directory, S3, HTTP, signed URLs, failover lists) behind one interface, and the Repository over them; imports _errors, _transfer and _format."""
