//! Helpers for the integration tests: start `csps`, wait for its ports, talk SIP and HTTP.
