-- The binding window, chosen as `src/algorithm/binding.rs` chooses it: when denied, the denying
-- window that waits longest; when allowed, the window with the fewest permits left, and on a tie
-- the one that takes longer to refill. Call `consider` once a window, in order, then `answer`.
-- Only a policy of several windows (more than one limit and length in ARGV) needs them: with one
-- window the scripts answer directly, and these functions are not even created.
local best, best_remaining, best_reset, best_retry = 0, 0, 0, -1
local consider, answer
if #ARGV > 5 then
  function consider(allowed, i, remaining, reset_after, retry_after)
    local better
    if best == 0 then
      better = true
    elseif not allowed then
      better = retry_after > best_retry
    else
      better = remaining < best_remaining or (remaining == best_remaining and reset_after > best_reset)
    end
    if better then
      best, best_remaining, best_reset, best_retry = i, remaining, reset_after, retry_after
    end
  end

  -- {allowed, binding window (1-based), limit, remaining, reset_after_us, retry_after_us}
  function answer(allowed, limits)
    return {allowed and 1 or 0, best, limits[best], best_remaining, best_reset, best_retry}
  end
end
