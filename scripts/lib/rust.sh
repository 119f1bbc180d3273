# Sourced by scripts/*: makes sure cargo is on PATH, installing Debian's
# toolchain when none is present.
chatferry_ensure_rust() {
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        case ":$PATH:" in *":$HOME/.cargo/bin:"*) ;; *) export PATH="$HOME/.cargo/bin:$PATH" ;; esac
    fi
    if command -v cargo >/dev/null 2>&1; then
        return 0
    fi
    echo "rust: cargo not found; installing Debian's cargo and rustc" >&2
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq && $sudo apt-get install -y -qq cargo rustc >&2 || {
        echo "rust: error: cannot install cargo; install a Rust toolchain (1.80 or newer) and retry" >&2
        return 1
    }
}
