# shellcheck shell=bash
# scripts/lib/pg.sh -- find or start a PostgreSQL for chatferry's scripts.
#
# Usage (from scripts/test, scripts/demo, ...):
#     source "$(dirname "${BASH_SOURCE[0]}")/lib/pg.sh"
#     chatferry_ensure_pg            # exports DATABASE_URL, or returns non-zero
#
# Order of preference:
#   1. DATABASE_URL already set      -> used as is (must answer `select 1`).
#   2. server on 127.0.0.1:5432      -> first of postgres/root/$USER that logs in
#                                       without a password and has CREATEDB;
#                                       skipped when CHATFERRY_PG_SKIP_SHARED=1.
#   3. private cluster               -> <repo>/.chatferry/pg (created on demand,
#                                       reused afterwards), 127.0.0.1:<port>,
#                                       port 54329 or the next free one.
# Database name: $CHATFERRY_DB_NAME (default: chatferry).
# chatferry_stop_private_pg stops the private cluster;
# chatferry_stop_pg_if_started stops it only if this shell started it and
# CHATFERRY_KEEP_PG is not set (scripts/test calls it on exit).
#
# All messages go to stderr, prefixed "pg: ". Nothing is printed on stdout.
# Safe to source more than once and under `set -euo pipefail`; the functions
# return non-zero instead of exiting and do not change the caller's options.

if [[ -n "${_CHATFERRY_PG_SH_LOADED:-}" ]]; then
    return 0 2>/dev/null || exit 0
fi
_CHATFERRY_PG_SH_LOADED=1   # deliberately not exported: child shells must source again
_CHATFERRY_PG_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_CHATFERRY_PG_LOCK_FD=""
_CHATFERRY_PG_STARTED_HERE=""

# ---------------------------------------------------------------- helpers ---

_chatferry_pg_log() { printf 'pg: %s\n' "$*" >&2; }
_chatferry_pg_die() { printf 'pg: error: %s\n' "$*" >&2; return 1; }

# Git top level of this library's location (fallback: two levels up from scripts/lib).
_chatferry_pg_repo_root() {
    local top
    if top="$(git -C "$_CHATFERRY_PG_LIB_DIR" rev-parse --show-toplevel 2>/dev/null)" && [[ -n "$top" ]]; then
        printf '%s\n' "$top"
    else
        (cd "$_CHATFERRY_PG_LIB_DIR/../.." && pwd)
    fi
}

_chatferry_pg_private_dir() {
    if [[ -n "${CHATFERRY_PG_DIR:-}" ]]; then
        printf '%s\n' "$CHATFERRY_PG_DIR"
        return 0
    fi
    local root
    root="$(_chatferry_pg_repo_root)" || return 1
    # As root, the cluster runs as the postgres user, who must be able to
    # reach the data directory; a checkout under a private home cannot be,
    # so the cluster then lives under /var/tmp, one per checkout.
    if [[ "$(id -u)" -eq 0 ]] && id postgres >/dev/null 2>&1 \
        && ! runuser -u postgres -- test -x "$root" 2>/dev/null; then
        printf '/var/tmp/chatferry-pg-%s\n' "$(printf '%s' "$root" | cksum | cut -d' ' -f1)"
        return 0
    fi
    printf '%s/.chatferry/pg\n' "$root"
}

_chatferry_pg_db_name() {
    local db="${CHATFERRY_DB_NAME:-chatferry}"
    if [[ ! "$db" =~ ^[A-Za-z_][A-Za-z0-9_-]{0,62}$ ]]; then
        _chatferry_pg_die "CHATFERRY_DB_NAME='$db' is not a plain database name (letters, digits, _ and -, max 63)"
        return 1
    fi
    printf '%s\n' "$db"
}

# Directories that may hold PostgreSQL server binaries, best first:
# the one behind `initdb` in PATH, then /usr/lib/postgresql/*/bin newest first,
# then a few other common layouts.
_chatferry_pg_candidate_bindirs() {
    local p d
    for p in initdb pg_ctl; do
        if p="$(command -v "$p" 2>/dev/null)" && [[ -n "$p" ]]; then
            d="$(dirname "$(readlink -f "$p" 2>/dev/null || printf '%s' "$p")")"
            printf '%s\n' "$d"
        fi
    done
    # shellcheck disable=SC2012
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r || true
    # shellcheck disable=SC2012
    ls -d /usr/pgsql-*/bin 2>/dev/null | sort -V -r || true
    [[ -d /usr/local/pgsql/bin ]] && printf '%s\n' /usr/local/pgsql/bin
    return 0
}

# Print a directory holding initdb, pg_ctl and postgres. With $1 (a major
# version such as "15"), only a directory whose pg_ctl has that major version.
_chatferry_pg_find_bindir() {
    local want="${1:-}" d ver
    while IFS= read -r d; do
        [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]] || continue
        if [[ -n "$want" ]]; then
            ver="$("$d/pg_ctl" --version 2>/dev/null | awk '{print $NF}')" || ver=""
            [[ "$ver" == "$want" || "$ver" == "$want".* ]] || continue
        fi
        printf '%s\n' "$d"
        return 0
    done < <(_chatferry_pg_candidate_bindirs | awk '!seen[$0]++')
    return 1
}

# Path of a client program (psql, pg_isready): PATH first, then server bindirs.
_chatferry_pg_client() {
    local prog="$1" p d
    if p="$(command -v "$prog" 2>/dev/null)" && [[ -n "$p" ]]; then
        printf '%s\n' "$p"; return 0
    fi
    while IFS= read -r d; do
        if [[ -x "$d/$prog" ]]; then printf '%s\n' "$d/$prog"; return 0; fi
    done < <(_chatferry_pg_candidate_bindirs)
    return 1
}

# psql that never prompts and ignores ~/.psqlrc.
_chatferry_pg_psql() {
    local psql
    psql="$(_chatferry_pg_client psql)" || { _chatferry_pg_die "psql not found (install postgresql-client)"; return 127; }
    PGCONNECT_TIMEOUT="${PGCONNECT_TIMEOUT:-5}" "$psql" -X -w -v ON_ERROR_STOP=1 "$@"
}

# Same, but only password-less logins count (the exported URL carries no password).
_chatferry_pg_psql_nopw() {
    local psql
    psql="$(_chatferry_pg_client psql)" || { _chatferry_pg_die "psql not found (install postgresql-client)"; return 127; }
    env -u PGPASSWORD PGPASSFILE=/dev/null PGCONNECT_TIMEOUT="${PGCONNECT_TIMEOUT:-5}" \
        "$psql" -X -w -v ON_ERROR_STOP=1 "$@"
}

# Create database $4 on host $1 port $2 as user $3 unless it exists.
_chatferry_pg_ensure_db() {
    local host="$1" port="$2" user="$3" db="$4" exists
    local -a conn=(-h "$host" -p "$port" -U "$user" -d postgres -At -v "db=$db")
    exists="$(printf '%s\n' "select 1 from pg_database where datname = :'db';" \
        | _chatferry_pg_psql_nopw "${conn[@]}" 2>&1)" \
        || { _chatferry_pg_die "cannot query databases on $host:$port as $user: ${exists//$'\n'/ }"; return 1; }
    [[ "$exists" == 1 ]] && return 0
    local out
    if ! out="$(printf '%s\n' 'create database :"db";' | _chatferry_pg_psql_nopw "${conn[@]}" -q 2>&1)"; then
        # Lost a race with a concurrent caller? Then the database is there now.
        exists="$(printf '%s\n' "select 1 from pg_database where datname = :'db';" \
            | _chatferry_pg_psql_nopw "${conn[@]}" 2>/dev/null)" || exists=""
        [[ "$exists" == 1 ]] && return 0
        _chatferry_pg_die "cannot create database $db on $host:$port as $user: ${out//$'\n'/ }"
        return 1
    fi
    _chatferry_pg_log "created database $db on $host:$port"
}

_chatferry_pg_mask_url() {
    # postgres://user:secret@host/db -> postgres://user:***@host/db
    printf '%s\n' "$1" | sed -E 's#^([a-zA-Z]+://[^:/@]*):[^@]*@#\1:***@#'
}

# --------------------------------------------------------- 1. DATABASE_URL ---

_chatferry_pg_use_env_url() {
    local out masked
    masked="$(_chatferry_pg_mask_url "$DATABASE_URL")"
    if ! _chatferry_pg_client psql >/dev/null; then
        _chatferry_pg_die "DATABASE_URL is set ($masked) but psql is not installed to check it; install postgresql-client or unset DATABASE_URL"
        return 1
    fi
    if ! out="$(_chatferry_pg_psql "$DATABASE_URL" -Atc 'select 1' 2>&1)" || [[ "$out" != 1 ]]; then
        out="$(printf '%s' "$out" | tr -s '\n\t' '  ')"
        _chatferry_pg_die "DATABASE_URL=$masked does not answer 'select 1' (${out% }); fix it, or unset DATABASE_URL to use/start a local server automatically"
        return 1
    fi
    export DATABASE_URL
    _chatferry_pg_log "using DATABASE_URL from the environment ($masked)"
}

# ------------------------------------------------ 2. shared server on 5432 ---

_chatferry_pg_try_shared() {
    local host=127.0.0.1 port=5432 isready u can db seen=" "
    _chatferry_pg_client psql >/dev/null || return 1
    if isready="$(_chatferry_pg_client pg_isready)"; then
        "$isready" -q -h "$host" -p "$port" -t 3 >/dev/null 2>&1 || return 1
    fi   # without pg_isready the login attempts below are the probe
    for u in postgres root "${USER:-$(id -un 2>/dev/null || true)}"; do
        [[ -n "$u" && "$seen" != *" $u "* ]] || continue
        seen+="$u "
        _chatferry_pg_psql_nopw -h "$host" -p "$port" -U "$u" -d postgres -Atc 'select 1' >/dev/null 2>&1 || continue
        can="$(_chatferry_pg_psql_nopw -h "$host" -p "$port" -U "$u" -d postgres -Atc \
            'select rolcreatedb or rolsuper from pg_roles where rolname = current_user' 2>/dev/null)" || can=""
        if [[ "$can" != t ]]; then
            _chatferry_pg_log "user $u can log in on $host:$port but lacks CREATEDB; not using it"
            continue
        fi
        db="$(_chatferry_pg_db_name)" || return 2
        _chatferry_pg_ensure_db "$host" "$port" "$u" "$db" || return 2
        export DATABASE_URL="postgres://$u@$host:$port/$db"
        _chatferry_pg_log "using shared server $host:$port as $u: DATABASE_URL=$DATABASE_URL"
        return 0
    done
    _chatferry_pg_log "a server answers on $host:$port but no password-less user with CREATEDB (tried:${seen% }); using a private cluster"
    return 1
}

# ---------------------------------------------------- 3. private cluster ---

# Run a command as the cluster owner, from inside the cluster directory and
# without the lock fd (else the postmaster would inherit it and hold the lock).
_chatferry_pg_as_owner() {
    local owner="$1" dir="$2"
    shift 2
    (
        cd "$dir" || exit 1
        if [[ -n "$_CHATFERRY_PG_LOCK_FD" ]]; then exec {_CHATFERRY_PG_LOCK_FD}>&-; fi
        if (( EUID != 0 )); then
            exec "$@"
        elif command -v runuser >/dev/null 2>&1; then
            exec runuser -u "$owner" -- "$@"
        else
            exec su -s "${BASH:-/bin/bash}" "$owner" -c "$(printf '%q ' "$@")"
        fi
    )
}

_chatferry_pg_port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

_chatferry_pg_free_port() {
    local p
    for (( p = 54329; p < 54429; p++ )); do
        _chatferry_pg_port_in_use "$p" || { printf '%s\n' "$p"; return 0; }
    done
    _chatferry_pg_die "no free TCP port in 54329-54428 on 127.0.0.1"
}

_chatferry_pg_install() {
    local -a su=()
    if (( EUID != 0 )); then
        if command -v sudo >/dev/null 2>&1 && { sudo -n true 2>/dev/null || [[ -t 0 ]]; }; then
            su=(sudo)
        else
            _chatferry_pg_die "PostgreSQL server binaries (initdb, pg_ctl) not found and not root (no usable sudo); install PostgreSQL (e.g. apt-get install postgresql) or set DATABASE_URL"
            return 1
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        _chatferry_pg_die "PostgreSQL server binaries (initdb, pg_ctl) not found and apt-get is unavailable; install PostgreSQL or set DATABASE_URL"
        return 1
    fi
    _chatferry_pg_log "initdb/pg_ctl not found; installing PostgreSQL with apt-get (output on stderr)"
    ${su[@]+"${su[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update >&2 \
        && ${su[@]+"${su[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql postgresql-contrib >&2 \
        || { _chatferry_pg_die "apt-get install postgresql failed"; return 1; }
}

# Decide (and if needed create) the unprivileged user that owns the cluster.
_chatferry_pg_owner() {
    local data="$1" owner
    if (( EUID != 0 )); then
        owner="$(id -un)"
        if [[ -e "$data" && ! -O "$data" ]]; then
            _chatferry_pg_die "$data belongs to $(stat -c %U "$data" 2>/dev/null || echo another user), not $owner; run as that user, or remove the directory"
            return 1
        fi
    elif [[ -e "$data" ]]; then
        owner="$(stat -c %U "$data")"
        if [[ "$owner" == root || "$owner" == UNKNOWN ]]; then
            _chatferry_pg_die "$data is owned by '$owner'; PostgreSQL cannot run as root. Remove $(dirname "$data") and retry"
            return 1
        fi
    elif id -u postgres >/dev/null 2>&1; then
        owner=postgres
    else
        owner=chatferry-pg
        if ! id -u "$owner" >/dev/null 2>&1; then
            useradd --system --no-create-home --shell /usr/sbin/nologin "$owner" \
                || { _chatferry_pg_die "useradd $owner failed"; return 1; }
            _chatferry_pg_log "created system user $owner to own the private cluster"
        fi
    fi
    printf '%s\n' "$owner"
}

_chatferry_pg_write_conf() {   # data owner port sockdir
    local data="$1" owner="$2" port="$3" sock="$4" sockq
    # The socket path (+ "/.s.PGSQL.NNNNN") must fit in sun_path (107 bytes);
    # if the checkout path is too long, go TCP-only (the URL uses TCP anyway).
    if (( ${#sock} + 18 > 107 )); then
        _chatferry_pg_log "socket path $sock is too long for a unix socket; private cluster will be TCP-only"
        sockq=""
    else
        sockq="${sock//\'/\'\'}"
    fi
    cat >"$data/chatferry.conf" <<EOF || return 1
# Written by scripts/lib/pg.sh on every start; edit that script, not this file.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$sockq'
max_connections = 200
fsync = on
EOF
    if (( EUID == 0 )); then chown "$owner" "$data/chatferry.conf" || return 1; fi
    if ! grep -q "^include_if_exists = 'chatferry.conf'" "$data/postgresql.conf"; then
        printf "\n# chatferry (scripts/lib/pg.sh)\ninclude_if_exists = 'chatferry.conf'\n" >>"$data/postgresql.conf" || return 1
    fi
}

_chatferry_pg_private_locked() {
    local pgdir="$1" data="$1/data" sock="$1/sock" want="" bindir owner port out i db attempt isready

    [[ -f "$data/PG_VERSION" ]] && want="$(cat "$data/PG_VERSION")"
    if ! bindir="$(_chatferry_pg_find_bindir "$want")"; then
        if [[ -n "$want" ]] && _chatferry_pg_find_bindir >/dev/null; then
            _chatferry_pg_die "$data was made by PostgreSQL $want, whose binaries are not installed; install them or remove $pgdir"
            return 1
        fi
        _chatferry_pg_install || return 1
        bindir="$(_chatferry_pg_find_bindir "$want")" \
            || { _chatferry_pg_die "PostgreSQL ${want:+$want }binaries still not found after installing"; return 1; }
    fi

    owner="$(_chatferry_pg_owner "$data")" || return 1
    if (( EUID == 0 )); then
        chown "$owner" "$pgdir" || return 1
        if ! _chatferry_pg_as_owner "$owner" / test -w "$pgdir" -a -x "$pgdir"; then
            _chatferry_pg_die "user $owner cannot use $pgdir (a parent directory is probably private, e.g. under /root); set DATABASE_URL instead"
            return 1
        fi
    fi

    if [[ ! -f "$data/PG_VERSION" ]]; then
        if [[ -e "$data" ]] && [[ -n "$(ls -A "$data" 2>/dev/null)" ]]; then
            _chatferry_pg_die "$data exists but is not a PostgreSQL cluster; remove $pgdir and retry"
            return 1
        fi
        _chatferry_pg_log "initialising private cluster in $data ($bindir, owner $owner)"
        if ! _chatferry_pg_as_owner "$owner" "$pgdir" "$bindir/initdb" -D "$data" -U chatferry \
                --auth=trust --encoding=UTF8 --locale=C >"$pgdir/initdb.log" 2>&1; then
            _chatferry_pg_die "initdb failed; see $pgdir/initdb.log: $(tail -n 3 "$pgdir/initdb.log" | tr '\n' ' ')"
            return 1
        fi
    fi
    if (( EUID == 0 )); then
        _chatferry_pg_as_owner "$owner" "$pgdir" mkdir -p "$sock" || return 1
    else
        mkdir -p "$sock" || return 1
    fi

    if _chatferry_pg_as_owner "$owner" "$pgdir" "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        port="$(sed -n 4p "$data/postmaster.pid" 2>/dev/null)"
        [[ "$port" =~ ^[0-9]+$ ]] || { _chatferry_pg_die "private cluster runs but $data/postmaster.pid has no port"; return 1; }
        _chatferry_pg_log "private cluster already running on 127.0.0.1:$port"
    else
        port="$(sed -nE 's/^port = ([0-9]+)$/\1/p' "$data/chatferry.conf" 2>/dev/null)" || port=""
        for attempt in 1 2 3; do
            if [[ -z "$port" ]] || _chatferry_pg_port_in_use "$port"; then
                port="$(_chatferry_pg_free_port)" || return 1
            fi
            _chatferry_pg_write_conf "$data" "$owner" "$port" "$sock" || { _chatferry_pg_die "cannot write $data/chatferry.conf"; return 1; }
            _chatferry_pg_log "starting private cluster on 127.0.0.1:$port (log: $pgdir/server.log)"
            if out="$(_chatferry_pg_as_owner "$owner" "$pgdir" "$bindir/pg_ctl" -D "$data" \
                    -l "$pgdir/server.log" -w -t 30 start 2>&1)"; then
                _CHATFERRY_PG_STARTED_HERE=1
                break
            fi
            # Someone grabbed the port between the check and the bind? Try another.
            if (( attempt < 3 )) && _chatferry_pg_port_in_use "$port" \
                    && ! _chatferry_pg_as_owner "$owner" "$pgdir" "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; then
                port=""
                continue
            fi
            _chatferry_pg_die "pg_ctl start failed ($(printf '%s' "$out" | tr '\n' ' ')); last log lines: $(tail -n 5 "$pgdir/server.log" 2>/dev/null | tr '\n' ' ')"
            return 1
        done
    fi

    isready="$(_chatferry_pg_client pg_isready)" || isready=""
    for (( i = 0; i < 60; i++ )); do
        if [[ -n "$isready" ]]; then
            "$isready" -q -h 127.0.0.1 -p "$port" -U chatferry -d postgres -t 2 >/dev/null 2>&1 && break
        else
            _chatferry_pg_psql_nopw -h 127.0.0.1 -p "$port" -U chatferry -d postgres -Atc 'select 1' >/dev/null 2>&1 && break
        fi
        sleep 0.5
    done
    if (( i >= 60 )); then
        _chatferry_pg_die "private cluster on 127.0.0.1:$port did not accept connections within 30 s; see $pgdir/server.log"
        return 1
    fi

    db="$(_chatferry_pg_db_name)" || return 1
    _chatferry_pg_ensure_db 127.0.0.1 "$port" chatferry "$db" || return 1
    export DATABASE_URL="postgres://chatferry@127.0.0.1:$port/$db"
    _chatferry_pg_log "using private cluster: DATABASE_URL=$DATABASE_URL"
}

_chatferry_pg_use_private() {
    local pgdir rc=0
    pgdir="$(_chatferry_pg_private_dir)" || return 1
    mkdir -p "$pgdir" || { _chatferry_pg_die "cannot create $pgdir"; return 1; }
    # Serialise concurrent callers (e.g. scripts/test and scripts/demo at once).
    if command -v flock >/dev/null 2>&1 && exec {_CHATFERRY_PG_LOCK_FD}>>"$pgdir/.lock"; then
        if ! flock -w 120 "$_CHATFERRY_PG_LOCK_FD"; then
            exec {_CHATFERRY_PG_LOCK_FD}>&-
            _CHATFERRY_PG_LOCK_FD=""
            _chatferry_pg_die "timed out waiting for the lock on $pgdir/.lock"
            return 1
        fi
    else
        _CHATFERRY_PG_LOCK_FD=""
    fi
    _chatferry_pg_private_locked "$pgdir" || rc=$?
    if [[ -n "$_CHATFERRY_PG_LOCK_FD" ]]; then
        exec {_CHATFERRY_PG_LOCK_FD}>&-
        _CHATFERRY_PG_LOCK_FD=""
    fi
    return "$rc"
}

# ------------------------------------------------------------- public API ---

# Make sure a PostgreSQL answers and export DATABASE_URL for it.
chatferry_ensure_pg() {
    if [[ -n "${DATABASE_URL:-}" ]]; then
        _chatferry_pg_use_env_url
        return
    fi
    case "${CHATFERRY_PG_SKIP_SHARED:-}" in
        1|true|yes) _chatferry_pg_log "CHATFERRY_PG_SKIP_SHARED set; not looking at 127.0.0.1:5432" ;;
        *)
            local rc=0
            _chatferry_pg_try_shared || rc=$?
            (( rc == 0 )) && return 0
            (( rc == 2 )) && return 1   # shared server usable but setting it up failed: say so, don't paper over it
            ;;
    esac
    _chatferry_pg_use_private
}

# Stop the private cluster under <repo>/.chatferry/pg if it is running.
chatferry_stop_private_pg() {
    local pgdir data owner bindir
    pgdir="$(_chatferry_pg_private_dir)" || return 1
    data="$pgdir/data"
    if [[ ! -f "$data/PG_VERSION" ]]; then
        _chatferry_pg_log "no private cluster in $pgdir"
        return 0
    fi
    bindir="$(_chatferry_pg_find_bindir "$(cat "$data/PG_VERSION")")" \
        || { _chatferry_pg_die "no PostgreSQL $(cat "$data/PG_VERSION") binaries to stop $data with"; return 1; }
    owner="$(_chatferry_pg_owner "$data")" || return 1
    if ! _chatferry_pg_as_owner "$owner" "$pgdir" "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        _chatferry_pg_log "private cluster in $pgdir is not running"
        return 0
    fi
    if ! _chatferry_pg_as_owner "$owner" "$pgdir" "$bindir/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null 2>&1; then
        _chatferry_pg_die "pg_ctl stop failed; see $pgdir/server.log"
        return 1
    fi
    _chatferry_pg_log "stopped private cluster in $pgdir"
}

# Stop the private cluster if this shell started it (not if it was already
# running, nor for a shared server or DATABASE_URL), unless CHATFERRY_KEEP_PG
# is set: a test run leaves no server behind, and none outlives its folder.
chatferry_stop_pg_if_started() {
    [[ -n "$_CHATFERRY_PG_STARTED_HERE" ]] || return 0
    case "${CHATFERRY_KEEP_PG:-}" in
        1|true|yes)
            _chatferry_pg_log "CHATFERRY_KEEP_PG set; leaving the private cluster running ($DATABASE_URL)"
            return 0
            ;;
    esac
    chatferry_stop_private_pg && _CHATFERRY_PG_STARTED_HERE=""
}
