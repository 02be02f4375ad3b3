// Overloaded: one visitor from several lambdas, for std::visit over the
// optimizer's variants (std::visit(Overloaded{[](const A&) {...}, ...}, v)).
#ifndef PSD_CLIENT_SRC_OVERLOADED_H_
#define PSD_CLIENT_SRC_OVERLOADED_H_

namespace psd {
namespace client {
namespace internal {

template <class... Ts>
struct Overloaded : Ts... {
  using Ts::operator()...;
};
template <class... Ts>
Overloaded(Ts...) -> Overloaded<Ts...>;

}  // namespace internal
}  // namespace client
}  // namespace psd

#endif  // PSD_CLIENT_SRC_OVERLOADED_H_
