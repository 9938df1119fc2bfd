# Shared by the proxy benchmarks (sourced): free ports, waiting for a server, and the
# nginx and HAProxy configurations they are compared with, so both benchmarks measure
# the same peers. Expects $BACKEND (host:port of demo-app) before the *_conf calls.

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() {
  for _ in $(seq 1 400); do
    if curl -fs -o /dev/null "http://$1/"; then return; fi
    sleep 0.05
  done
  echo "nothing answers on $1" >&2
  exit 1
}

# nginx_conf PORT DIR [EXTRA]: one worker in front of $BACKEND, written to DIR/nginx.conf;
# EXTRA is added to the main context (e.g. `master_process off;` under valgrind).
nginx_conf() {
  local port=$1 dir=$2 extra=${3:-}
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<CONF
user root;
worker_processes 1;
$extra
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; multi_accept on; }
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  keepalive_requests 1000000;
  upstream app { server $BACKEND; keepalive 256; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
CONF
}

# haproxy_conf PORT FILE: one thread in front of $BACKEND.
haproxy_conf() {
  local port=$1 file=$2
  cat >"$file" <<CONF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  option forwardfor
  http-reuse always
frontend fe
  bind 127.0.0.1:$port
  default_backend app
backend app
  server s1 $BACKEND
CONF
}
