# As the official image's docker-entrypoint.sh: without a config file, no protected mode.
if [ "$1" = redis-server ] && [ "${2#*.conf}" = "${2:-}" ]; then
    shift
    set -- redis-server --protected-mode no "$@"
fi
exec "$@"
