#!/usr/bin/env bash
# scripts/check.sh: the static checks every commit must pass (STYLE.md section 7).
#   1. formatting:  cargo fmt --all -- --check
#   2. lints:       cargo clippy --all-targets -- -D warnings   (lib, bin, tests, benches, examples)
#   3. docs:        cargo doc --no-deps --document-private-items with rustdoc warnings as errors
# The tests themselves run in scripts/test, which calls this script first.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> check: %s\n' "$*"; }

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "RUSTDOCFLAGS=\"-D warnings\" cargo doc --no-deps --document-private-items"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --document-private-items

printf '\n==> check: fmt, clippy and doc all clean\n'
