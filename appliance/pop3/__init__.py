"""POP3 (RFC 1939 with CAPA, STLS, SASL and response codes) over the MailStore seam."""
