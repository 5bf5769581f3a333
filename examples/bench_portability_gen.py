import hashlib, json, os, sys
root, n, layer_kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
v2 = os.path.join(root, "docker/registry/v2")
def blob(data):
    d = hashlib.sha256(data).hexdigest()
    p = os.path.join(v2, "blobs/sha256", d[:2], d)
    os.makedirs(p, exist_ok=True)
    with open(os.path.join(p, "data"), "wb") as f: f.write(data)
    return d
def link(path, d):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "link"), "w") as f: f.write("sha256:" + d)
for i in range(n):
    repo = os.path.join(v2, "repositories", "bench", "r%04d" % i)
    layers = [os.urandom(layer_kib * 1024) for _ in range(2)]
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "n": i}).encode()
    descs = []
    cd = blob(cfg); link(os.path.join(repo, "_layers/sha256", cd), cd)
    for l in layers:
        d = blob(l); link(os.path.join(repo, "_layers/sha256", d), d)
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + d, "size": len(l)})
    m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + cd, "size": len(cfg)},
        "layers": descs}).encode()
    md = blob(m)
    link(os.path.join(repo, "_manifests/revisions/sha256", md), md)
    link(os.path.join(repo, "_manifests/tags/latest/current"), md)
    link(os.path.join(repo, "_manifests/tags/latest/index/sha256", md), md)
