# Copyright (c) dogestry developers
# MIT License (see LICENSES/MIT.txt or https://opensource.org/license/mit)
# SPDX-License-Identifier: MIT
"""The dogestry command line; a front end, imports everything below (and starts the registry server)."""
