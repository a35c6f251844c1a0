// PtrMap (ptr_map.h): the open-addressing address -> block map of the cudaFree hot path.
#include "allocator/ptr_map.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <unordered_map>
#include <vector>

#include "alloc_counter.h"

namespace cudapool {
namespace {

struct Value {
  int id;
};

// Keys are block addresses: non-zero multiples of 512.
std::uintptr_t key_of(std::uint64_t n) {
  return (std::uintptr_t{1} << 40) + n * 512;
}

// The home slot PtrMap gives `key` in a table of `capacity` slots (its Fibonacci hash, copied
// here only to aim keys at the end of the table; the checks never depend on it).
std::size_t home_slot(std::uintptr_t key, std::size_t capacity) {
  unsigned shift = 64 - __builtin_ctzll(capacity);
  return static_cast<std::size_t>((key * 0x9E3779B97F4A7C15ull) >> shift) & (capacity - 1);
}

// Keys whose home slot is one of the last `last_slots` of a 1024-slot table, so that their probe
// runs wrap around to slot 0.
std::vector<std::uintptr_t> keys_near_table_end(std::size_t count, std::size_t last_slots) {
  std::vector<std::uintptr_t> keys;
  for (std::uint64_t n = 1; keys.size() < count; ++n) {
    std::uintptr_t k = key_of(n);
    if (home_slot(k, 1024) >= 1024 - last_slots) keys.push_back(k);
  }
  return keys;
}

TEST(PtrMap, FindsWhatWasInsertedAndNothingElse) {
  PtrMap<Value> map;
  Value a{1}, b{2};
  EXPECT_EQ(map.find(key_of(1)), nullptr);
  map.insert(key_of(1), &a);
  map.insert(key_of(2), &b);
  EXPECT_EQ(map.size(), 2u);
  EXPECT_EQ(map.find(key_of(1)), &a);
  EXPECT_EQ(map.find(key_of(2)), &b);
  EXPECT_EQ(map.find(key_of(3)), nullptr);
  EXPECT_EQ(map.find(key_of(1) + 512 * 1024), nullptr);
}

TEST(PtrMap, EraseRemovesOnlyThatKey) {
  PtrMap<Value> map;
  Value a{1}, b{2};
  map.insert(key_of(1), &a);
  map.insert(key_of(2), &b);
  map.erase(key_of(1));
  EXPECT_EQ(map.size(), 1u);
  EXPECT_EQ(map.find(key_of(1)), nullptr);
  EXPECT_EQ(map.find(key_of(2)), &b);
}

TEST(PtrMap, EraseOfAnAbsentKeyChangesNothing) {
  PtrMap<Value> map;
  Value a{1};
  map.insert(key_of(1), &a);
  map.erase(key_of(7));
  EXPECT_EQ(map.size(), 1u);
  EXPECT_EQ(map.find(key_of(1)), &a);
}

TEST(PtrMap, GrowsAndKeepsEveryEntry) {
  PtrMap<Value> map;
  std::vector<Value> values(5000);
  for (std::size_t i = 0; i < values.size(); ++i) {
    values[i].id = static_cast<int>(i);
    map.insert(key_of(i + 1), &values[i]);
  }
  EXPECT_EQ(map.size(), values.size());
  for (std::size_t i = 0; i < values.size(); ++i)
    ASSERT_EQ(map.find(key_of(i + 1)), &values[i]);
  EXPECT_EQ(map.find(key_of(values.size() + 1)), nullptr);
}

TEST(PtrMap, ClearRemovesEveryEntry) {
  PtrMap<Value> map;
  Value a{1}, b{2};
  map.insert(key_of(1), &a);
  map.insert(key_of(2), &b);
  map.clear();
  EXPECT_EQ(map.size(), 0u);
  EXPECT_EQ(map.find(key_of(1)), nullptr);
  EXPECT_EQ(map.find(key_of(2)), nullptr);
  // Usable afterwards.
  map.insert(key_of(3), &a);
  EXPECT_EQ(map.size(), 1u);
  EXPECT_EQ(map.find(key_of(3)), &a);
}

// Probe runs that wrap from the last slot to slot 0, then erasures from every position of such a
// run: backward-shift deletion must keep every remaining key reachable.
TEST(PtrMap, EraseKeepsWrappedProbeRunsReachable) {
  std::vector<std::uintptr_t> keys = keys_near_table_end(12, 3);
  std::vector<Value> values(keys.size());
  for (std::size_t victim = 0; victim < keys.size(); ++victim) {
    PtrMap<Value> map;
    for (std::size_t i = 0; i < keys.size(); ++i)
      map.insert(keys[i], &values[i]);
    map.erase(keys[victim]);
    SCOPED_TRACE(victim);
    EXPECT_EQ(map.size(), keys.size() - 1);
    EXPECT_EQ(map.find(keys[victim]), nullptr);
    for (std::size_t i = 0; i < keys.size(); ++i) {
      if (i == victim) continue;
      EXPECT_EQ(map.find(keys[i]), &values[i]) << "key " << i;
    }
  }
}

TEST(PtrMap, RandomInsertEraseMatchesUnorderedMap) {
  std::mt19937_64 rng(12345);
  // Half the keys crowd the end of the table so that runs wrap; half spread out.
  std::vector<std::uintptr_t> pool_keys = keys_near_table_end(200, 16);
  for (std::uint64_t n = 1; pool_keys.size() < 600; ++n)
    pool_keys.push_back(key_of(1000000 + n * 7919));  // disjoint from the crowded keys
  std::vector<Value> values(pool_keys.size());

  PtrMap<Value> map;
  std::unordered_map<std::uintptr_t, Value*> model;
  for (int step = 0; step < 60000; ++step) {
    std::size_t i = rng() % pool_keys.size();
    std::uintptr_t k = pool_keys[i];
    bool present = model.count(k) != 0;
    // Bias towards ~300 live keys so the table stays around 1024 slots and probe runs are long.
    bool do_insert = !present && (model.size() < 300 || rng() % 4 == 0);
    if (do_insert) {
      map.insert(k, &values[i]);
      model[k] = &values[i];
    } else if (present) {
      map.erase(k);
      model.erase(k);
    } else {
      map.erase(k);  // absent: a no-op
    }
    ASSERT_EQ(map.size(), model.size()) << "step " << step;
    if (step % 97 == 0) {
      for (std::size_t j = 0; j < pool_keys.size(); ++j) {
        auto it = model.find(pool_keys[j]);
        ASSERT_EQ(map.find(pool_keys[j]), it == model.end() ? nullptr : it->second)
            << "step " << step << " key " << j;
      }
    }
  }
}

TEST(PtrMap, InsertAndEraseAllocateNothingWithoutGrowth) {
  PtrMap<Value> map;
  Value a{1};
  test::HostAllocationCounter counter;
  for (std::uint64_t n = 1; n <= 10000; ++n) {
    map.insert(key_of(n), &a);
    if (n > 100) map.erase(key_of(n - 100));
  }
  EXPECT_EQ(counter.count(), 0u);
  EXPECT_EQ(map.size(), 100u);
}

}  // namespace
}  // namespace cudapool
