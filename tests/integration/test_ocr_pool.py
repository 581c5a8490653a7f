"""The Tesseract variant's engine pool in the session app (local.yaml: ``engines: 2``): concurrent
requests of real line scans each get their own image's text back."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.conftest import dataset
from pixelfleet.models.metrics import character_error_rate


def test_concurrent_ocr_requests_on_the_pool_each_read_their_own_line(client):
    variant = client.get("/v1/models").json()["families"]["ocr"]["variants"]["tesseract"]
    assert variant["engines"] == 2
    folder = dataset("ocr", "lines")
    scans = sorted(folder.glob("*.png"))[3:11]  # eight different lines, each sent twice
    truths = [scan.with_name(scan.stem + ".gt.txt").read_text(encoding="utf-8") for scan in scans]

    def read(scan):
        response = client.post("/v1/ocr", params={"model": "tesseract"}, content=scan.read_bytes(), headers={"Content-Type": "image/png"})
        assert response.status_code == 200, response.text
        return response.json()["text"]

    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(read, scans + scans))
    for index, text in enumerate(texts):
        truth = truths[index % len(scans)]
        assert character_error_rate(text, truth) < 0.1, (scans[index % len(scans)].name, text)
        # another line's text (engines mixed up between requests) would be ~0.8 away
        assert all(character_error_rate(text, other) > 0.3 for other in truths if other != truth)
    assert texts[: len(scans)] == texts[len(scans) :]  # the same image reads the same on either engine
