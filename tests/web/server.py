"""The browser test's static server: serves web/ on 127.0.0.1 and takes the
page's self-test result (POST /selftest-result), which it writes to a file
before exiting. Usage: server.py WEB_DIR RESULT_FILE PORT_FILE (the port it
bound, chosen by the OS, is written to PORT_FILE)."""
import functools
import http.server
import os
import sys
import threading

web_dir, result_file, port_file = sys.argv[1:4]


class Handler(http.server.SimpleHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(result_file + ".tmp", "wb") as f:
            f.write(body)
        # Renamed into place so the waiting script never reads half a file.
        os.replace(result_file + ".tmp", result_file)
        self.send_response(204)
        self.end_headers()
        threading.Thread(target=self.server.shutdown).start()

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(
    ("127.0.0.1", 0), functools.partial(Handler, directory=web_dir)
)
with open(port_file, "w") as f:
    f.write(str(server.server_address[1]))
server.serve_forever()
