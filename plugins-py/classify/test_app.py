"""Unit tests of the classify port without a host (sluice_sdk.testing.FakeHost):
`PYTHONPATH=../../sdk-py python -m unittest` from this folder."""

import json
import unittest

import app
import sluice_sdk as sluice
from sluice_sdk import ModelError
from sluice_sdk.testing import FakeHost

LABELS = ["billing", "bug report", "other"]

class T(unittest.TestCase):
    def run_it(self, inp, **kw):
        with FakeHost(**kw) as host:
            return json.loads(sluice.run(sluice.Job("j", max_attempts=3), json.dumps(inp), app.handle)), host
    def test_confident_fast(self):
        out, host = self.run_it({"text": "x", "labels": LABELS}, replies={"fast": '```json\n{"label":"Bug Report","confidence":"85%"}\n```'})
        self.assertEqual(out["label"], "bug report"); self.assertAlmostEqual(out["confidence"], 0.85); self.assertFalse(out["escalated"])
    def test_escalates(self):
        out, host = self.run_it({"text": "x", "labels": LABELS}, replies={"fast": '{"label":"other","confidence":0.2}', "smart": '{"label":"billing","confidence":0.9}'})
        self.assertEqual(out["label"], "billing"); self.assertTrue(out["escalated"]); self.assertEqual(len(host.calls), 2)
    def test_smart_down_retryable_unless_last(self):
        with FakeHost(replies={"fast": '{"label":"other","confidence":0.2}', "smart": ModelError("unavailable", "down")}):
            with self.assertRaises(sluice.Error) as c:
                sluice.run(sluice.Job("j", attempt=1, max_attempts=3), json.dumps({"text": "x", "labels": LABELS}), app.handle)
            self.assertTrue(c.exception.is_retryable)
            out = json.loads(sluice.run(sluice.Job("j", attempt=3, max_attempts=3), json.dumps({"text": "x", "labels": LABELS}), app.handle))
            self.assertEqual(out["label"], "other")
    def test_keyword(self):
        self.assertEqual(app.keyword_match("The app crashed: a bug. Another bug! Please fix the bug report form.", LABELS)[0], "bug report")
        self.assertEqual(app.keyword_match("nothing relevant", LABELS), ("billing", 0.0))
    def test_bug_is_retryable(self):
        with FakeHost(replies={"fast": lambda r: 1/0}) as host:
            with self.assertRaises(sluice.Error) as c:
                sluice.run(sluice.Job("j"), json.dumps({"text": "x", "labels": LABELS}), app.handle)
        self.assertTrue(c.exception.is_retryable); self.assertIn("ZeroDivisionError", c.exception.message)
        self.assertTrue(host.logs("error"))
if __name__ == "__main__": unittest.main()
