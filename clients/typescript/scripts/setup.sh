# shellcheck shell=bash
# Sourced by scripts/dev and scripts/test-clients (after scripts/lib.sh), from the
# repository root: Node.js >= 20 and npm (apt-get when missing), the SDK's dev
# dependencies from the committed lock file (npm ci), and the SDK build: dist/ (tsc:
# ES modules + type declarations) and dist/courier.min.js (the bundle the demo loads).
setup_typescript_sdk() {
  ensure_command node nodejs
  ensure_command npm npm
  local major
  major=$(node -p 'process.versions.node.split(".")[0]')
  if [ "$major" -lt 20 ]; then
    echo "scripts: the TypeScript SDK needs Node.js >= 20 (found $(node --version))" >&2
    return 1
  fi
  (
    cd clients/typescript
    npm ci --no-audit --no-fund --loglevel=error
    npm run --silent build
    npm run --silent size
  )
}
