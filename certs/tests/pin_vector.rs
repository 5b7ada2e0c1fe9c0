//! A fixed pin vector: a certificate made by OpenSSL once (`openssl req -x509` over a P-256
//! key) and the pin OpenSSL computed for it then
//! (`openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256
//! -binary | base64`). Needs no tool at test time, so the pin-covers-the-SPKI promise is
//! checked on every machine.
#![allow(clippy::unwrap_used)]

const CERT: &str = include_str!("vectors/pin-vector.pem");
const PIN: &str = "sha256//KCW8sfPxaIq/6nukUGFuZlqI3TRZJqRqVECVnkyKZNI=";

#[test]
fn the_pin_of_a_fixed_certificate_is_what_openssl_computed() {
    assert_eq!(mesh_certs::pin_from_pem(CERT).unwrap(), PIN);
    let der = mesh_certs::certs_der_from_pem(CERT).unwrap().remove(0);
    assert_eq!(mesh_certs::pin_from_cert_der(&der).unwrap(), PIN);
    let spki = mesh_certs::spki_der_from_cert_der(&der).unwrap();
    assert_eq!(mesh_certs::pin_from_spki_der(&spki), PIN);
    assert_eq!(
        mesh_certs::ec_p256_point_from_spki(&spki).unwrap().len(),
        65
    );
    assert_eq!(
        mesh_certs::common_name_from_cert_der(&der).unwrap(),
        "pin-vector"
    );
}
