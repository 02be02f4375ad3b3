// ChannelSecurity: how a psd client (library, psctl, or a server calling
// another server) secures its channels: the PEM files for TLS and the file
// holding its bearer token. All empty (the default) means a plaintext
// channel without a token, as before security existed.
//
// The token file holds the token alone on a line, or uses the server's
// "<role> <token>" format (then the first entry is used, or with
// `token_role` the first entry of that role). '#' starts a comment; blank
// lines are ignored. Tokens are only sent over TLS: a token without
// `tls_ca` is an error when the channel is built.
#ifndef PSD_COMMON_CHANNEL_SECURITY_H_
#define PSD_COMMON_CHANNEL_SECURITY_H_

#include <string>

namespace psd {

struct ChannelSecurity {
  std::string tls_ca;      // PEM roots that sign the server's certificate; set: TLS on
  std::string tls_cert;    // PEM client certificate chain (mutual TLS); optional
  std::string tls_key;     // PEM private key of tls_cert
  std::string token_file;  // bearer token; empty: send none
  std::string token_role;  // with a "<role> <token>" file: pick this role ("node"); empty: first

  bool tls() const { return !tls_ca.empty(); }
};

}  // namespace psd

#endif  // PSD_COMMON_CHANNEL_SECURITY_H_
