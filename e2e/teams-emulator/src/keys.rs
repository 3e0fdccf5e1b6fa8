//! The emulated tenant's RSA signing keys: RS256 JWTs signed with ring, the JWKS that publishes
//! the public part, and verification of the tokens this emulator issued (Graph checks its
//! callers' app tokens). Keys are PKCS#8 PEM files given on the command line (tests use the
//! committed test keys under `tests/data/entra/`), so no key generation and no OpenSSL is needed.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair, RsaKeyPair};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};

/// One RSA key pair with the key id it is published under.
pub struct SigningKey {
    /// The `kid` in token headers and the JWKS.
    pub kid: String,
    pair: RsaKeyPair,
}

impl SigningKey {
    /// Reads a PKCS#8 PEM RSA private key.
    pub fn load(path: &Path, kid: &str) -> Result<SigningKey, String> {
        let der = PrivatePkcs8KeyDer::from_pem_file(path)
            .map_err(|e| format!("{}: not a PKCS#8 PEM private key: {e}", path.display()))?;
        let pair = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
            .map_err(|e| format!("{}: not an RSA key ring accepts: {e}", path.display()))?;
        Ok(SigningKey {
            kid: kid.to_owned(),
            pair,
        })
    }

    /// The public key as a JWK (`kty`, `use`, `kid`, `n`, `e`, `alg`), as Entra publishes it.
    pub fn jwk(&self) -> Value {
        let public: ring::rsa::PublicKeyComponents<Vec<u8>> = self.pair.public().into();
        json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "n": B64.encode(&public.n),
            "e": B64.encode(&public.e),
        })
    }

    /// A compact RS256 JWT of `claims`, with this key's `kid` in the header.
    pub fn sign(&self, claims: &Value) -> Result<String, String> {
        let header = json!({"typ": "JWT", "alg": "RS256", "kid": self.kid});
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let mut sig = vec![0; self.pair.public().modulus_len()];
        self.pair
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .map_err(|e| format!("signing failed: {e}"))?;
        Ok(format!("{input}.{}", B64.encode(sig)))
    }

    /// The claims of a JWT whose RS256 signature this key made; `None` for anything else.
    pub fn verify(&self, token: &str) -> Option<Value> {
        let (input, sig) = token.rsplit_once('.')?;
        let (_, payload) = input.split_once('.')?;
        let sig = B64.decode(sig).ok()?;
        signature::UnparsedPublicKey::new(
            &signature::RSA_PKCS1_2048_8192_SHA256,
            self.pair.public_key().as_ref(),
        )
        .verify(input.as_bytes(), &sig)
        .ok()?;
        serde_json::from_slice(&B64.decode(payload).ok()?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> SigningKey {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/data/entra")
            .join(name);
        SigningKey::load(&p, "k1").expect("test key")
    }

    #[test]
    fn signs_and_verifies_its_own_tokens_only() {
        let (good, rogue) = (key("test-signing-key.pem"), key("rogue-signing-key.pem"));
        let t = good.sign(&json!({"sub": "x"})).expect("sign");
        assert_eq!(good.verify(&t), Some(json!({"sub": "x"})));
        assert_eq!(rogue.verify(&t), None);
        let forged = rogue.sign(&json!({"sub": "x"})).expect("sign");
        assert_eq!(good.verify(&forged), None);
        assert_eq!(good.verify("a.b"), None);
        assert_eq!(good.jwk()["e"], "AQAB");
    }
}
