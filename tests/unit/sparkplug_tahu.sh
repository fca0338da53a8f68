#!/bin/sh
# SPDX-License-Identifier: MIT
# Encode fresh Sparkplug B vectors with Eclipse Tahu's sparkplug-payload
# (npm) and run test_sparkplug's "tahu" case on them. Exits 77 (meson:
# SKIP) with the reason when node, npm or the package cannot be had.
#   usage: sparkplug_tahu.sh SRCDIR TEST_EXE WORKDIR
# The package comes from build-npm/ (tests/install-deps test puts it
# there) or, failing that, is installed into WORKDIR/npm.
set -u
src=$1 exe=$2 work=$3
pkg=sparkplug-payload@1.0.3
skip() { echo "SKIP: $*: the Tahu-encoded vectors were not generated"; exit 77; }

command -v node >/dev/null 2>&1 || skip "node is not installed"
npmdir=$src/build-npm
if [ ! -d "$npmdir/node_modules/sparkplug-payload" ]; then
	npmdir=$work/npm
	if [ ! -d "$npmdir/node_modules/sparkplug-payload" ]; then
		command -v npm >/dev/null 2>&1 || skip "npm is not installed"
		mkdir -p "$npmdir"
		npm install --prefix "$npmdir" --no-audit --no-fund --silent --fetch-timeout=20000 --fetch-retries=1 "$pkg" >"$work/npm.log" 2>&1 ||
			{ tail -n 5 "$work/npm.log"; skip "npm install $pkg failed (registry unreachable?)"; }
	fi
fi
rm -rf "$work/vectors"
NODE_PATH=$npmdir/node_modules node "$src/tests/unit/sparkplug_vectors.js" "$work/vectors" || exit 1
SM_SPARKPLUG_VECTORS=$work/vectors CK_RUN_CASE=tahu exec "$exe"
