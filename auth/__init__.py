"""auth: who you are, proven — logins, access and refresh tokens, signing keys, throttling."""
