#!/bin/sh
# Installs the tools the operations tests drive (crates/levee/tests/{metrics_promtool,dashboard}.rs):
#   promtool       Debian's `prometheus` package (checks the /metrics exposition)
#   chromium       Debian's `chromium` (the dashboard, headless)
#   target/ops-node/   npm's playwright-core (drives that chromium; no browser download)
# Idempotent: Debian packages already installed are left alone; a stamp file records the npm
# pin. Called by the tests themselves, so `cargo test --workspace` on a fresh Debian machine
# installs what it needs (apt-get needs root, as in CI containers).
# Usage: scripts/ops-tools.sh [promtool|chromium|playwright]...   Prints one path per tool.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
mkdir -p "$target"
NODE_PKGS="playwright-core@1.49.1"
what=${*:-promtool chromium playwright}
exec 9>"$target/.ops-tools.lock"
flock 9
apt_install() {
  if ! dpkg -s "$1" >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "$1" >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends "$1" >/dev/null; }
  fi
}
for w in $what; do
  case $w in
    promtool) apt_install prometheus; command -v promtool ;;
    chromium) apt_install chromium; command -v chromium ;;
    playwright)
      dir=$target/ops-node
      if [ "$(cat "$dir/.stamp" 2>/dev/null)" != "$NODE_PKGS" ]; then
        mkdir -p "$dir"
        (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --silent --no-audit --no-fund --prefix "$dir" $NODE_PKGS >/dev/null)
        echo "$NODE_PKGS" > "$dir/.stamp"
      fi
      echo "$dir/node_modules"
      ;;
    *) echo "unknown tool $w" >&2; exit 2 ;;
  esac
done
