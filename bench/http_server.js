// A minimal keep-alive HTTP server for bench/http_run.sh: GET / answers a small JSON body.
// Prints "PORT <n>" once listening. Not a test fixture: it only serves the benchmark.
const http = require("http");
const body = JSON.stringify({ ok: true, text: "x".repeat(200) });
const srv = http.createServer((req, res) => {
  res.writeHead(200, { "Content-Type": "application/json", "Content-Length": body.length });
  res.end(body);
});
srv.keepAliveTimeout = 60000;
srv.listen(0, "127.0.0.1", () => console.log("PORT " + srv.address().port));
