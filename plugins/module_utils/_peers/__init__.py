# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
"""Fleet peers: each layer crosses from the remote once per fleet; imports _format, _storage, _codecs and _metrics, not _ops or a front end."""
