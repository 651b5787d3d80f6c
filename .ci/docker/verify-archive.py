#!/usr/bin/env python3
"""Checks a finished user archive on the Docker volume against the fake Mapillary API it came from.

usage: verify-archive.py DATA_DIR USERNAME API_URL     (token in the MLD_E2E_TOKEN environment variable)

"Complete and correct" means, for the user's collection `archive/mapillary-<user>-original/`:
- the set of `.jpg` files is exactly the set of image ids the API lists for the user, each at
  `<UTC date of captured_at | unknown-date>/[<sequence>/]<id>.jpg`, and no `.part` file is anywhere;
- `metadata.jsonl` has one line per image, the same ids, sorted by captured_at, without URLs;
- every file is a JPEG whose bytes are the CDN's body for that id (the fake's `mly-fake:<id>:original`
  comment), carrying GPS from computed_geometry (else geometry) within 1e-5 degrees and
  DateTimeOriginal = captured_at in UTC (read back by exiftool, an independent reader).
Prints one line per check; exits 1 on the first failure.
"""

import datetime
import http.client
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request


def fail(message):
    print(f"  FAIL: {message}", flush=True)
    sys.exit(1)


def ok(message):
    print(f"  ok: {message}", flush=True)


def api_images(api_url, username, token):
    """Every image the fake lists for the user, following `next` like a client would."""
    fields = "id,captured_at,geometry,computed_geometry,sequence"
    url = urllib.parse.urljoin(api_url, "images") + "?" + urllib.parse.urlencode(
        {"creator_username": username, "fields": fields, "limit": 2000}
    )
    images = {}
    while url:
        page = fetch_page(url, token)
        for image in page.get("data", []):
            images[image["id"]] = image
        url = (page.get("paging") or {}).get("next")
    return images


def fetch_page(url, token, attempts=40):
    """One page, retried like a client would: the fake runs with `--faults flaky`, so about one call
    in ten answers 5xx, 429, a Graph error, invalid or truncated JSON, or a reset connection."""
    for attempt in range(1, attempts + 1):
        request = urllib.request.Request(url, headers={"Authorization": f"OAuth {token}"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.load(response)
        except (OSError, ValueError, http.client.HTTPException) as error:
            # urllib's HTTPError and URLError are OSErrors; a cut body is an HTTPException or a
            # ValueError from the JSON decoder.
            if attempt == attempts:
                fail(f"the fake API did not answer {url} after {attempts} tries: {error!r}")
            time.sleep(min(2.0, 0.1 * attempt))
    raise AssertionError("unreachable")


def utc(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc)


def main():
    if len(sys.argv) != 4:
        fail(__doc__.strip().splitlines()[2])
    data_dir, username, api_url = sys.argv[1:4]
    token = os.environ.get("MLD_E2E_TOKEN", "")
    collection = os.path.join(data_dir, "archive", f"mapillary-{username}-original")

    expected = api_images(api_url, username, token)
    if not expected:
        fail(f"the fake API lists no images for {username}")

    parts = []
    for root, _dirs, files in os.walk(data_dir):
        parts += [os.path.join(root, f) for f in files if f.endswith(".part")]
    if parts:
        fail(f"{len(parts)} .part files left, e.g. {parts[0]}")
    ok("no .part file on the volume")

    found = {}
    for root, _dirs, files in os.walk(collection):
        for name in files:
            if name.endswith(".jpg"):
                found[name[: -len(".jpg")]] = os.path.relpath(os.path.join(root, name), collection)
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        fail(f"{len(found)} files for {len(expected)} images: missing {missing[:5]}, unexpected {extra[:5]}")
    ok(f"{len(found)} .jpg files, exactly the {len(expected)} ids the API lists")

    for image_id, rel in found.items():
        image = expected[image_id]
        date = "unknown-date"
        if image.get("captured_at") is not None:
            date = utc(image["captured_at"]).strftime("%Y-%m-%d")
        want = os.path.join(*([date] + ([image["sequence"]] if image.get("sequence") else []) + [f"{image_id}.jpg"]))
        if rel != want:
            fail(f"{image_id} is at {rel}, expected {want}")
    ok("every file at <UTC date>/<sequence>/<id>.jpg")

    with open(os.path.join(collection, "metadata.jsonl"), encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    if len(lines) != len(expected):
        fail(f"metadata.jsonl has {len(lines)} lines for {len(expected)} images")
    if {line["id"] for line in lines} != set(expected):
        fail("metadata.jsonl ids differ from the API's")
    if any(k.endswith("_url") for line in lines for k in line):
        fail("metadata.jsonl carries image URLs")
    times = [line.get("captured_at") for line in lines if line.get("captured_at") is not None]
    if times != sorted(times):
        fail("metadata.jsonl is not sorted by captured_at")
    ok(f"metadata.jsonl: {len(lines)} lines, same ids, sorted, no URLs")

    exif = subprocess.run(
        ["exiftool", "-json", "-n", "-q", "-r", "-ext", "jpg", "-FileType", "-Comment",
         "-GPSLatitude", "-GPSLongitude", "-DateTimeOriginal", collection],
        check=True, capture_output=True, text=True,
    )
    tags = {os.path.basename(t["SourceFile"])[: -len(".jpg")]: t for t in json.loads(exif.stdout)}
    if set(tags) != set(found):
        fail(f"exiftool read {len(tags)} of {len(found)} files")
    for image_id, t in tags.items():
        image = expected[image_id]
        if t.get("FileType") != "JPEG":
            fail(f"{image_id}: not a JPEG ({t.get('FileType')})")
        if t.get("Comment") != f"mly-fake:{image_id}:original":
            fail(f"{image_id}: body is not the CDN's image for that id (comment {t.get('Comment')!r})")
        point = image.get("computed_geometry") or image.get("geometry")
        lon, lat = point["coordinates"][:2]
        if not isinstance(t.get("GPSLatitude"), (int, float)) or not isinstance(t.get("GPSLongitude"), (int, float)):
            fail(f"{image_id}: no GPS position in EXIF")
        if abs(t["GPSLatitude"] - lat) > 1e-5 or abs(t["GPSLongitude"] - lon) > 1e-5:
            fail(f"{image_id}: GPS {t['GPSLatitude']},{t['GPSLongitude']} but the API says {lat},{lon}")
        if image.get("captured_at") is not None:
            want = utc(image["captured_at"]).strftime("%Y:%m:%d %H:%M:%S")
            if t.get("DateTimeOriginal") != want:
                fail(f"{image_id}: DateTimeOriginal {t.get('DateTimeOriginal')!r}, expected {want}")
    ok(f"exiftool: all {len(tags)} files are the right JPEGs with the API's GPS position and UTC capture time")


if __name__ == "__main__":
    main()
