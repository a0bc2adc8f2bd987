"""What the tests share: tiny models, a worker in a subprocess, a fake worker client, local stand-in servers, the browser."""
