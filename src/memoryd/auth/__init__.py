"""Authentication: the API key format, secret hashing, the verified-key cache,
and the authenticator that turns `x-api-key` into a `Principal`."""
