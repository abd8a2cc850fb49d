"""Unit tests without a host: `python -m unittest` (with sluice_sdk importable, e.g.
`pip install -e {{sdk_py_path}}`)."""

import json
import unittest

import sluice_sdk as sluice
from sluice_sdk.testing import FakeHost

import app


class HandleTest(unittest.TestCase):
    def test_summarizes_with_the_fast_model(self):
        with FakeHost(replies={"fast": "A short summary."}) as host:
            out = json.loads(sluice.run(sluice.Job("j1"), '{"text": "A long text."}', app.handle))
        self.assertEqual(out["summary"], "A short summary.")
        self.assertEqual(host.calls[0].model, "fast")

    def test_empty_text_is_permanent(self):
        with FakeHost() as host:
            with self.assertRaises(sluice.Error) as caught:
                sluice.run(sluice.Job("j1"), '{"text": " "}', app.handle)
        self.assertFalse(caught.exception.is_retryable)
        self.assertEqual(host.calls, [])


if __name__ == "__main__":
    unittest.main()
