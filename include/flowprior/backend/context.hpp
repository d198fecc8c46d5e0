/// @file
/// ContextSlot: where an object that runs backend primitives (a field workspace, an optimizer)
/// finds its backend context (docs/backends.md "Context"). It owns a default-constructed context
/// and uses it unless the caller lends one of theirs; no context is ever global.
///
/// Includes no backend: a slot names `Backend::Context` only when it is instantiated, so this
/// header compiles on its own with the host compiler and with nvcc.
#pragma once

#include <utility>

namespace flowprior {

/// The context of one user of a backend: its own (default-constructed) or one lent by the
/// caller. A lent context is not owned: the caller keeps it alive while the slot uses it.
/// Copying a slot gives a slot with a fresh context of its own and nothing lent (a copy is
/// typically made for another thread, and a context serves one thread at a time); moving keeps
/// both the owned context and the loan.
template <class Backend>
class ContextSlot {
 public:
  using Context = typename Backend::Context;

  ContextSlot() = default;
  ContextSlot(const ContextSlot&) {}
  ContextSlot& operator=(const ContextSlot&) {
    lent_ = nullptr;
    return *this;
  }
  ContextSlot(ContextSlot&& o) noexcept : own_(std::move(o.own_)), lent_(o.lent_) {}
  ContextSlot& operator=(ContextSlot&& o) noexcept {
    own_ = std::move(o.own_);
    lent_ = o.lent_;
    return *this;
  }

  /// The context in use: the lent one if any, else the slot's own.
  Context& get() { return lent_ != nullptr ? *lent_ : own_; }
  /// Uses `ctx` from now on (not owned); nullptr returns to the slot's own context.
  void lend(Context* ctx) { lent_ = ctx; }
  /// Whether a caller's context is in use.
  bool lent() const { return lent_ != nullptr; }

 private:
  Context own_{};
  Context* lent_ = nullptr;
};

/// Lends a context to a user of a backend (anything with set_context: an optimizer, an EMA, a
/// workspace) for one scope, and returns the user to its own context when the scope ends,
/// exception or not. The trainer and the aligner lend their loss workspace's context this way,
/// so that the optimizer never keeps a pointer into a workspace that may move.
template <class User, class Context>
class LentContext {
 public:
  LentContext(User& user, Context& ctx) : user_(user) { user_.set_context(&ctx); }
  ~LentContext() { user_.set_context(nullptr); }
  LentContext(const LentContext&) = delete;
  LentContext& operator=(const LentContext&) = delete;

 private:
  User& user_;
};

}  // namespace flowprior
