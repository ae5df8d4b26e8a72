# serve flow.yml in the background, wait until its gateway answers, then stop it
orchestra flow --uses flow.yml --protocol grpc --protocol http --port "${GRPC_PORT:-8080}" --port "${HTTP_PORT:-8081}" &
server=$!
for _ in $(seq 120); do orchestra ping "grpc://127.0.0.1:${GRPC_PORT:-8080}" && break; sleep 0.5; done
orchestra ping "http://127.0.0.1:${HTTP_PORT:-8081}"   # exit status 0: healthy, 1: not
kill -INT "$server" && wait "$server"                   # SIGINT: a graceful stop, exit status 0
