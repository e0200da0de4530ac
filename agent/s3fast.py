"""A lean S3 client for the many-small-objects case: one signed GET or PUT on urllib3.

botocore spends about a millisecond of CPU on each request (events, validation, parsing); with
hundreds of small files and the GIL that, not the network, sets the pace. For objects below the
multipart threshold on a custom (path-style) endpoint, this signs the request itself (AWS
Signature Version 4, the same credentials botocore resolves) and sends it directly, at about a
third of the CPU. Anything else — AWS's own endpoints, large objects, listing, multipart — stays
on botocore.
"""

import datetime
import hashlib
import hmac
import xml.etree.ElementTree as ElementTree
from urllib.parse import quote, unquote_plus, urlparse

import urllib3

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


class S3RequestError(Exception):
    def __init__(self, method: str, key: str, status: int, body: bytes):
        self.status = status
        super().__init__(f"{method} {key}: HTTP {status} {body[:200]!r}")


class FastS3:
    def __init__(self, endpoint_url: str, region: str, credentials, *, pool_size: int,
                 ca_bundle: str | None = None, timeout: float = 60.0):
        parsed = urlparse(endpoint_url)
        self.origin = f"{parsed.scheme}://{parsed.netloc}"
        self.base_path = parsed.path.rstrip("/")
        self.host = parsed.netloc
        self.region = region
        self.credentials = credentials  # botocore Credentials (refreshable or not)
        kwargs = {"ca_certs": ca_bundle} if ca_bundle else {}
        self.http = urllib3.PoolManager(
            num_pools=2, maxsize=pool_size, retries=False, block=False,
            timeout=urllib3.Timeout(connect=10, read=timeout), **kwargs)
        # Every request goes to this one origin: its pool, looked up once, spares each
        # request the manager's URL parsing and pool lookup.
        self.pool = self.http.connection_from_url(self.origin)
        self._key_cache: tuple[str, str, bytes] | None = None

    # --- Signature Version 4 ---

    def _signing_key(self, secret: str, day: str) -> bytes:
        cached = self._key_cache
        if cached and cached[0] == secret and cached[1] == day:
            return cached[2]
        key = hmac.new(("AWS4" + secret).encode(), day.encode(), hashlib.sha256).digest()
        for part in (self.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        self._key_cache = (secret, day, key)
        return key

    def _signed(self, method: str, bucket: str, key: str, payload_sha256: str,
                extra_headers: dict | None = None,
                query: dict[str, str] | None = None) -> tuple[str, dict]:
        creds = self.credentials.get_frozen_credentials()
        now = datetime.datetime.now(datetime.UTC)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        path = f"{self.base_path}/{quote(bucket, safe='')}/{quote(key, safe='/~')}"
        query_string = "&".join(
            f"{quote(name, safe='-_.~')}={quote(value, safe='-_.~')}"
            for name, value in sorted((query or {}).items()))
        signed = {"host": self.host, "x-amz-content-sha256": payload_sha256,
                  "x-amz-date": amz_date}
        if creds.token:
            signed["x-amz-security-token"] = creds.token
        names = sorted(signed)
        canonical = "\n".join([
            method, path, query_string,
            *(f"{name}:{signed[name]}" for name in names), "",
            ";".join(names), payload_sha256])
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        signature = hmac.new(self._signing_key(creds.secret_key, day), to_sign.encode(),
                             hashlib.sha256).hexdigest()
        headers = {name: value for name, value in signed.items() if name != "host"}
        headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}")
        headers.update(extra_headers or {})
        return path + (f"?{query_string}" if query_string else ""), headers

    # --- requests ---

    def get(self, bucket: str, key: str, byte_range: tuple[int, int] | None = None,
            if_match: str | None = None):
        """Streaming GET, of the whole object or of bytes [first, last], optionally only if
        the object still has ETag `if_match` (else S3RequestError with status 412); returns
        the urllib3 response (content NOT decoded: a gzip-encoded object comes back as its
        gzip bytes). The caller reads it and calls release_conn()."""
        extra = {}
        if byte_range:
            extra["Range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
        if if_match:
            extra["If-Match"] = if_match
        url, headers = self._signed("GET", bucket, key, EMPTY_SHA256, extra)
        response = self.pool.urlopen("GET", url, headers=headers, preload_content=False,
                                     decode_content=False, retries=False, redirect=False)
        if response.status not in (200, 206):
            body = response.read()
            response.release_conn()
            raise S3RequestError("GET", key, response.status, body)
        return response

    def put(self, bucket: str, key: str, data: bytes, content_encoding: str | None = None):
        extra = {"Content-Length": str(len(data))}
        if content_encoding:
            extra["Content-Encoding"] = content_encoding
        url, headers = self._signed("PUT", bucket, key, hashlib.sha256(data).hexdigest(), extra)
        response = self.pool.urlopen("PUT", url, body=data, headers=headers, retries=False,
                                     redirect=False)
        if response.status != 200:
            raise S3RequestError("PUT", key, response.status, response.data)

    def list_page(self, bucket: str, prefix: str, max_keys: int,
                  token: str | None = None) -> tuple[list[dict], str | None]:
        """One ListObjectsV2 page: ([{"Key", "Size", "ETag"}], the next page's token or None).
        Parsed with ElementTree and without botocore's model: botocore spent most of a
        500-key listing's CPU parsing every LastModified date, which no caller reads. Keys
        are asked URL-encoded (any byte survives XML) and decoded as botocore does."""
        query = {"list-type": "2", "prefix": prefix, "max-keys": str(max_keys),
                 "encoding-type": "url"}
        if token:
            query["continuation-token"] = token
        url, headers = self._signed("GET", bucket, "", EMPTY_SHA256, query=query)
        response = self.pool.urlopen("GET", url, headers=headers, retries=False, redirect=False)
        if response.status != 200:
            raise S3RequestError("LIST", f"{bucket}/{prefix}", response.status, response.data)
        root = ElementTree.fromstring(response.data)
        encoded = root.findtext(f"{S3_NS}EncodingType") == "url"
        objects = []
        for item in root.iter(f"{S3_NS}Contents"):
            key = item.findtext(f"{S3_NS}Key") or ""
            objects.append({"Key": unquote_plus(key) if encoded else key,
                            "Size": int(item.findtext(f"{S3_NS}Size") or 0),
                            "ETag": item.findtext(f"{S3_NS}ETag")})
        truncated = root.findtext(f"{S3_NS}IsTruncated") == "true"
        next_token = root.findtext(f"{S3_NS}NextContinuationToken")
        return objects, (next_token if truncated and next_token else None)
