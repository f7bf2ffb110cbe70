# shellcheck shell=bash
# Shared helpers for scripts/*: sourced, not run.

# Installs Debian packages when a command is missing (root or sudo).
ensure_command() {
  local command=$1; shift
  command -v "$command" >/dev/null 2>&1 && return 0
  echo "scripts: '$command' not found; installing $* with apt-get" >&2
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# True when something answers PING at host:port (bash /dev/tcp, no redis-cli needed).
redis_answers() {
  local host=$1 port=$2
  (
    exec 3<>"/dev/tcp/$host/$port" || exit 1
    printf 'PING\r\n' >&3
    read -r -t 2 reply <&3 || exit 1
    [[ "$reply" == +PONG* || "$reply" == -NOAUTH* ]]
  ) 2>/dev/null
}

# A Redis URL without its password (for printing).
redact_url() {
  local rest=${1#*://}
  local userinfo=${rest%%@*}
  if [[ $rest == *@* && $userinfo == *:* ]]; then
    echo "${userinfo%%:*}:***@${rest#*@}"
  else
    echo "$rest"
  fi
}
